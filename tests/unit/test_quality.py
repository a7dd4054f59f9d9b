"""The output check: what fails a render, and how the quality score is lowered."""

import pytest

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
