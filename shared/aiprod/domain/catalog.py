"""The backend catalog model, parsed from backends.yaml (the one source of truth).

Pure: reading the file is `aiprod.wiring.config.load_catalog`."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

import yaml
from pydantic import Field, model_validator

from aiprod.domain.model import Strict


class Mode(StrEnum):
    TEXT_TO_VIDEO = "text_to_video"
    IMAGE_TO_VIDEO = "image_to_video"


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


class Price(Strict):
    usd_per_second: float = Field(gt=0)
    usd_per_second_with_audio: float | None = Field(default=None, gt=0)
    source: str
    as_of: str


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
