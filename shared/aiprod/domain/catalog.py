"""The backend catalog model, parsed from backends.yaml (the one source of truth).

Pure: reading the file is `aiprod.wiring.config.load_catalog`."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from aiprod.domain.model import Strict


class Mode(StrEnum):
    TEXT_TO_VIDEO = "text_to_video"
    IMAGE_TO_VIDEO = "image_to_video"


class Resolution(StrEnum):
    """An output resolution, named by the shorter side of the frame in pixels (as
    providers name them: "720p" is 1280x720 at 16:9 and 720x1280 at 9:16)."""

    P720 = "720p"
    P768 = "768p"
    P1080 = "1080p"

    @property
    def short_side(self) -> int:
        return int(self.value.removesuffix("p"))


DEFAULT_RESOLUTION = Resolution.P720


class Durations(Strict):
    """Either an inclusive integer range or an explicit list of allowed seconds."""

    min: int | None = None
    max: int | None = None
    values: tuple[int, ...] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> Durations:
        ranged = self.min is not None and self.max is not None
        if ranged == (self.values is not None):
            raise ValueError("durations: give either min and max, or values")
        return self

    def allows(self, seconds: int) -> bool:
        if self.values is not None:
            return seconds in self.values
        assert self.min is not None
        assert self.max is not None
        return self.min <= seconds <= self.max

    def describe(self) -> str:
        if self.values is not None:
            return ", ".join(str(v) for v in self.values)
        return f"{self.min}-{self.max}"


class ModeCapability(Strict):
    durations: Durations
    aspect_ratios: tuple[str, ...]
    audio: bool
    resolutions: tuple[Resolution, ...] = (DEFAULT_RESOLUTION,)
    # Narrower durations at some resolutions (Hailuo renders 10 s at 768p only).
    durations_at: dict[Resolution, Durations] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_resolutions(self) -> ModeCapability:
        stray = set(self.durations_at) - set(self.resolutions)
        if stray:
            raise ValueError(f"durations_at names resolutions not offered: {sorted(stray)}")
        return self

    def durations_for(self, resolution: Resolution) -> Durations:
        return self.durations_at.get(resolution, self.durations)


class Rate(Strict):
    usd_per_second: float = Field(gt=0)
    usd_per_second_with_audio: float | None = Field(default=None, gt=0)


class Price(Rate):
    source: str
    as_of: str
    # Where the provider prices by resolution: the rate at each resolution that
    # differs from the base rate above.
    by_resolution: dict[Resolution, Rate] = Field(default_factory=dict)

    def rate(self, resolution: Resolution) -> Rate:
        return self.by_resolution.get(resolution, self)


InputValue = str | int | float | bool


class InputField(Strict):
    """One model input a request field fills: its name, and the model's spelling of
    each request value where it differs (Kling: "1080p" is mode "pro")."""

    name: str = Field(min_length=1)
    values: dict[str, InputValue] | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    def value(self, given: InputValue) -> InputValue:
        if self.values is None:
            return given
        key = str(given).lower() if isinstance(given, bool) else str(given)
        if key not in self.values:
            raise ValueError(f"input {self.name} has no value for {given!r}")
        return self.values[key]


class ModelInputs(Strict):
    """How a request becomes one hosted model's inputs (Replicate: each model has its
    own input schema). A request field with no entry here is not sent; routing keeps
    requests the model cannot honour away through `capabilities`."""

    prompt: InputField | None = None
    image: InputField | None = None
    duration: InputField | None = None
    aspect_ratio: InputField | None = None
    resolution: InputField | None = None
    audio: InputField | None = None
    seed: InputField | None = None
    # Inputs sent with every request (a model default AIPROD does not want).
    constants: dict[str, InputValue] = Field(default_factory=dict)

    def build(self, given: Mapping[str, InputValue | None]) -> dict[str, InputValue]:
        """The model's input object for request values keyed by this class's field
        names (None: not given, so not sent)."""
        inputs: dict[str, InputValue] = dict(self.constants)
        for field_name in ("prompt", "image", "duration", "aspect_ratio", "resolution",
                           "audio", "seed"):
            field: InputField | None = getattr(self, field_name)
            value = given.get(field_name)
            if field is not None and value is not None:
                inputs[field.name] = field.value(value)
        return inputs


class Limits(Strict):
    max_prompt_chars: int = Field(gt=0)
    max_image_data_uri_bytes: int = Field(gt=0)
    # Past this, a task the provider may have started has surely ended.
    task_timeout_s: int = Field(gt=0)


class Backend(Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{1,40}[a-z0-9]$")
    provider: Literal["runway", "veo", "replicate"]
    model: str
    quality: float = Field(ge=0, le=1)
    typical_latency_s: int = Field(gt=0)
    # Whether the provider's API takes a seed for this model: a request's seed is
    # passed only where it is (elsewhere it still keys the result cache).
    accepts_seed: bool = False
    price: Price
    capabilities: dict[Mode, ModeCapability]
    limits: Limits
    # Replicate: the model's own input names (a Replicate backend without them cannot
    # render; the other providers' APIs name their inputs once for every model).
    inputs: ModelInputs | None = None

    @model_validator(mode="after")
    def _inputs_for_replicate(self) -> Backend:
        if self.provider != "replicate" and self.inputs is not None:
            raise ValueError(f"{self.name}: only Replicate backends take `inputs`")
        if self.inputs is not None and self.accepts_seed != (self.inputs.seed is not None):
            raise ValueError(f"{self.name}: accepts_seed must say whether `inputs` maps "
                             "a seed")
        offered = {r for c in self.capabilities.values() for r in c.resolutions}
        stray = set(self.price.by_resolution) - offered
        if stray:
            raise ValueError(f"{self.name}: priced at resolutions it does not render: "
                             f"{sorted(stray)}")
        return self

    @property
    def topic(self) -> str:
        return f"render-{self.name}"


class Catalog(Strict):
    version: Literal[1]
    backends: tuple[Backend, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> Catalog:
        names = [b.name for b in self.backends]
        if len(names) != len(set(names)):
            raise ValueError(f"backend names must be unique: {names}")
        return self

    def get(self, name: str) -> Backend:
        for backend in self.backends:
            if backend.name == name:
                return backend
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.backends]


def parse_catalog(text: str) -> Catalog:
    return Catalog.model_validate(yaml.safe_load(text))
