"""The output check: what fails a render, and how the quality score is lowered."""

import pytest

from aiprod.domain.catalog import Resolution
from aiprod.domain.quality import Observed, check


def observed(**overrides: float) -> Observed:
    values: dict[str, float] = {"width": 256, "height": 144, "duration_s": 5.0,
                                "blank_fraction": 0.0, "frozen_fraction": 0.0}
    values.update(overrides)
    return Observed(int(values["width"]), int(values["height"]), values["duration_s"],
                    values["blank_fraction"], values["frozen_fraction"])


def test_a_clean_video_keeps_the_catalog_score() -> None:
    verdict = check(observed(), 5, "16:9", 0.9)
    assert verdict.passed
    assert verdict.score == 0.9


@pytest.mark.parametrize(("overrides", "ratio", "problem"), [
    ({"duration_s": 3.0}, "16:9", "lasts 3.00 s, not 5 s"),
    ({}, "9:16", "is 256x144, not 9:16"),
    ({"width": 144}, "16:9", "is 144x144, not 16:9"),
    ({"blank_fraction": 0.8}, "16:9", "is blank in 80% of its frames"),
    ({"frozen_fraction": 0.95}, "16:9", "is frozen in 95% of its frames"),
])
def test_outputs_that_are_not_what_was_asked_fail(overrides: dict[str, float], ratio: str,
                                                  problem: str) -> None:
    verdict = check(observed(**overrides), 5, ratio, 0.9)
    assert not verdict.passed
    assert problem in verdict.problems


def test_small_flaws_pass_but_lower_the_score() -> None:
    verdict = check(observed(duration_s=5.2, blank_fraction=0.1, frozen_fraction=0.2), 5,
                    "16:9", 0.9)
    assert verdict.passed
    assert 0.6 < verdict.score < 0.9
    # 0.9 * (1 - 0.5*0.1 - 0.3*0.2 - 0.2/5)
    assert verdict.score == pytest.approx(0.9 * (1 - 0.05 - 0.06 - 0.04))


@pytest.mark.parametrize(("size", "ratio", "asked", "passed"), [
    ((1920, 1080), "16:9", Resolution.P1080, True),
    ((1080, 1920), "9:16", Resolution.P1080, True),
    ((1280, 720), "16:9", Resolution.P1080, False),   # a 1080p job answered at 720p
    ((720, 1280), "9:16", Resolution.P720, True),
    ((960, 960), "1:1", Resolution.P720, True),       # Runway's 720p square
    ((1366, 768), "16:9", Resolution.P720, True),     # more than asked is no failure
    ((1280, 720), "16:9", Resolution.P768, False),
    ((1364, 766), "16:9", Resolution.P768, True),     # within 2% of 768
])
def test_a_frame_smaller_than_the_resolution_asked_for_fails(
        size: tuple[int, int], ratio: str, asked: Resolution, passed: bool) -> None:
    verdict = check(observed(width=size[0], height=size[1]), 5, ratio, 0.9, asked)
    assert verdict.passed is passed, verdict.problems
    if not passed:
        assert verdict.problems == (f"is {size[0]}x{size[1]}, below {asked.value}",)


def test_no_resolution_asked_checks_no_size() -> None:
    assert check(observed(), 5, "16:9", 0.9, None).passed
