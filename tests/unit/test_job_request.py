"""The job request: defaults, and clear refusals of bad input."""

import pytest
from pydantic import ValidationError

from aiprod.domain.catalog import Mode
from aiprod.domain.job import AspectRatio, JobRequest, Policy


def test_defaults_match_the_design() -> None:
    request = JobRequest(prompt="a fox")
    assert request.duration_seconds == 5
    assert request.aspect_ratio is AspectRatio.LANDSCAPE
    assert request.audio is False
    assert request.policy is Policy.CHEAPEST
    assert request.mode is Mode.TEXT_TO_VIDEO


def test_an_image_makes_it_image_to_video() -> None:
    assert JobRequest(image_url="https://example.com/a.png").mode is Mode.IMAGE_TO_VIDEO


@pytest.mark.parametrize(("body", "field"), [
    ({}, "give a prompt, an image_url"),
    ({"prompt": "x", "duration_seconds": 0}, "duration_seconds"),
    ({"prompt": "x", "aspect_ratio": "4:3"}, "aspect_ratio"),
    ({"prompt": "x", "min_quality": 1.5}, "min_quality"),
    ({"prompt": "x", "max_cost_usd": -1}, "max_cost_usd"),
    ({"prompt": "x", "policy": "random"}, "policy"),
    ({"prompt": "x", "colour": "red"}, "colour"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": "x", "metadata": {"k": 1}}, "metadata"),
])
def test_bad_requests_name_the_problem(body: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        JobRequest.model_validate(body)


@pytest.mark.parametrize("url", ["https://example.com/a.png", "gs://bucket/a.png",
                                 "data:image/png;base64,iVBORw0KGgo=",
                                 "data:image/jpeg;base64,/9j/4AAQ"])
def test_image_sources_accepted(url: str) -> None:
    assert JobRequest(image_url=url).image_url == url


@pytest.mark.parametrize("url", ["ftp://example.com/a.png",
                                 "file:///etc/passwd", "data:text/html;base64,PGgxPg==",
                                 "data:image/png,rawbytes"])
def test_other_image_sources_are_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="image_url must be an https:// URL"):
        JobRequest(image_url=url)
