"""The one base of the models AIPROD parses from its own files."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A model of a file AIPROD owns (backends.yaml, monitoring.yaml): an unknown key
    is a typo to refuse, not to ignore, and what was read never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
