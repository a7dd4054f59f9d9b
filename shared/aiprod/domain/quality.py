"""The output check and the job's quality score.

Every output is decoded before a job may succeed (see aiprod.adapters.media.probe_video).
A video that is mostly blank or frozen, or whose duration or aspect ratio is not
what was asked for, or whose frame is smaller than the resolution asked for
(a 1080p request answered at 720p), fails the check: that is the backend's failure, and the job
falls back. A video that passes keeps the backend's catalog quality score,
lowered in proportion to what the check found (docs/quality.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiprod.domain.catalog import Resolution

DURATION_TOLERANCE_S = 0.5     # plus 5% of the requested duration
DURATION_TOLERANCE_SHARE = 0.05
ASPECT_TOLERANCE = 0.03        # relative difference of width/height ratios
RESOLUTION_TOLERANCE = 0.02    # the shorter side may fall 2% short of the nominal one
MAX_BLANK_FRACTION = 0.5       # more than half the frames one flat colour
MAX_FROZEN_FRACTION = 0.9      # nine frames in ten identical to the previous one
BLANK_PENALTY = 0.5            # score lost per unit of blank fraction
FROZEN_PENALTY = 0.3           # score lost per unit of frozen fraction
DURATION_PENALTY = 1.0         # score lost per unit of relative duration error


@dataclass(frozen=True)
class Observed:
    """What decoding the output found (a subset of aiprod.adapters.media.VideoInfo)."""

    width: int
    height: int
    duration_s: float
    blank_fraction: float
    frozen_fraction: float


@dataclass(frozen=True)
class Verdict:
    problems: tuple[str, ...] = field(default_factory=tuple)
    score: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.problems


def _ratio(aspect_ratio: str) -> float:
    width, height = aspect_ratio.split(":")
    return int(width) / int(height)


def check(observed: Observed, duration_s: int, aspect_ratio: str,
          backend_quality: float, resolution: Resolution | None = None) -> Verdict:
    """`resolution` None: any frame size passes (a caller that asked for none)."""
    problems = []
    tolerance = DURATION_TOLERANCE_S + DURATION_TOLERANCE_SHARE * duration_s
    if abs(observed.duration_s - duration_s) > tolerance:
        problems.append(f"lasts {observed.duration_s:.2f} s, not {duration_s} s")
    wanted = _ratio(aspect_ratio)
    got = observed.width / observed.height if observed.height else 0.0
    if abs(got - wanted) / wanted > ASPECT_TOLERANCE:
        problems.append(f"is {observed.width}x{observed.height}, not {aspect_ratio}")
    short_side = min(observed.width, observed.height)
    if resolution is not None and \
            short_side < resolution.short_side * (1 - RESOLUTION_TOLERANCE):
        problems.append(f"is {observed.width}x{observed.height}, below {resolution.value}")
    if observed.blank_fraction > MAX_BLANK_FRACTION:
        problems.append(f"is blank in {observed.blank_fraction:.0%} of its frames")
    if observed.frozen_fraction > MAX_FROZEN_FRACTION:
        problems.append(f"is frozen in {observed.frozen_fraction:.0%} of its frames")
    duration_error = abs(observed.duration_s - duration_s) / duration_s if duration_s else 0.0
    penalty = (BLANK_PENALTY * observed.blank_fraction
               + FROZEN_PENALTY * observed.frozen_fraction
               + DURATION_PENALTY * duration_error)
    score = round(max(0.0, backend_quality * (1 - penalty)), 4)
    return Verdict(tuple(problems), score)
