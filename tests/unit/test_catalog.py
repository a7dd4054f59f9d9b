"""The shipped catalog parses, and bad catalogs are refused with a reason."""

import pytest
from pydantic import ValidationError

from aiprod.domain.catalog import Mode, parse_catalog
from aiprod.wiring.config import load_catalog


def test_shipped_catalog_has_one_backend_per_provider_with_current_models() -> None:
    catalog = load_catalog()
    by_provider = {b.provider: b for b in catalog.backends}
    assert set(by_provider) == {"runway", "veo", "replicate"}
    assert by_provider["runway"].model == "gen4.5"
    assert by_provider["veo"].model == "veo-3.1-fast-generate-001"
    for backend in catalog.backends:
        assert backend.price.source
        assert backend.price.as_of
        assert Mode.TEXT_TO_VIDEO in backend.capabilities


def test_duplicate_backend_names_are_refused() -> None:
    text = load_catalog().model_dump_json()
    import json

    data = json.loads(text)
    data["backends"].append(data["backends"][0])
    with pytest.raises(ValidationError, match="unique"):
        parse_catalog(json.dumps(data))


def test_durations_need_exactly_one_form() -> None:
    catalog = load_catalog().model_dump(mode="json")
    catalog["backends"][0]["capabilities"]["text_to_video"]["durations"] = {
        "min": 2, "max": 10, "values": [4]}
    import json

    with pytest.raises(ValidationError, match="either min and max, or values"):
        parse_catalog(json.dumps(catalog))
