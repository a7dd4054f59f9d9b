"""The shipped catalog parses, and bad catalogs are refused with a reason."""

import json

import pytest
from pydantic import ValidationError

from aiprod.domain.catalog import Mode, ModelInputs, Resolution, parse_catalog
from aiprod.wiring.config import load_catalog


def test_shipped_catalog_has_one_backend_per_provider_with_current_models() -> None:
    catalog = load_catalog()
    by_provider = {b.provider: b for b in reversed(catalog.backends)}  # each one's first
    assert set(by_provider) == {"runway", "veo", "replicate"}
    assert by_provider["runway"].model == "gen4.5"
    assert by_provider["veo"].model == "veo-3.1-fast-generate-001"
    for backend in catalog.backends:
        assert backend.price.source
        assert backend.price.as_of
        assert backend.capabilities


def test_the_catalog_offers_seven_backends_from_five_vendors_at_several_resolutions() -> None:
    catalog = load_catalog()
    models = {b.name: b.model for b in catalog.backends}
    assert len(models) >= 7
    assert models["runway-gen4-turbo"] == "gen4_turbo"
    assert models["veo-31"] == "veo-3.1-generate-001"
    vendors = {m.split("/")[0] for b, m in models.items() if b.startswith("replicate-")}
    assert vendors == {"bytedance", "kwaivgi", "minimax"}
    # gen4_turbo only animates an image (docs.dev.runwayml.com: "Image required").
    assert set(catalog.get("runway-gen4-turbo").capabilities) == {Mode.IMAGE_TO_VIDEO}
    offered = {r for b in catalog.backends for c in b.capabilities.values()
               for r in c.resolutions}
    assert offered == {Resolution.P720, Resolution.P768, Resolution.P1080}


def test_every_replicate_backend_maps_the_request_onto_its_models_own_inputs() -> None:
    for backend in load_catalog().backends:
        if backend.provider != "replicate":
            assert backend.inputs is None
            continue
        assert backend.inputs is not None, backend.name
        assert backend.inputs.prompt is not None
        assert backend.inputs.image is not None  # every one animates images too
        assert backend.inputs.duration is not None


def test_model_inputs_rename_respell_and_leave_out() -> None:
    inputs = ModelInputs.model_validate({
        "prompt": "prompt", "image": "start_image",
        "resolution": {"name": "mode", "values": {"720p": "standard", "1080p": "pro"}},
        "audio": {"name": "sound", "values": {"true": "on", "false": "off"}},
        "constants": {"prompt_optimizer": False}})
    built = inputs.build({"prompt": "fox", "image": None, "duration": 5,
                          "aspect_ratio": "16:9", "resolution": "1080p", "audio": False})
    # No duration or aspect_ratio entry: not sent; no image given: not sent.
    assert built == {"prompt": "fox", "mode": "pro", "sound": "off",
                     "prompt_optimizer": False}
    with pytest.raises(ValueError, match="mode has no value for '768p'"):
        inputs.build({"resolution": "768p"})


def test_inputs_are_refused_on_backends_whose_api_names_its_own() -> None:
    data = load_catalog().model_dump(mode="json", exclude_none=True)
    data["backends"][0]["inputs"] = {"prompt": "prompt"}  # runway-gen45
    with pytest.raises(ValidationError, match="only Replicate backends take `inputs`"):
        parse_catalog(json.dumps(data))


def test_a_price_for_a_resolution_no_mode_renders_is_refused() -> None:
    data = load_catalog().model_dump(mode="json", exclude_none=True)
    data["backends"][0]["price"]["by_resolution"] = {"1080p": {"usd_per_second": 0.2}}
    with pytest.raises(ValidationError, match="priced at resolutions it does not render"):
        parse_catalog(json.dumps(data))


def test_duplicate_backend_names_are_refused() -> None:
    text = load_catalog().model_dump_json()

    data = json.loads(text)
    data["backends"].append(data["backends"][0])
    with pytest.raises(ValidationError, match="unique"):
        parse_catalog(json.dumps(data))


def test_durations_need_exactly_one_form() -> None:
    catalog = load_catalog().model_dump(mode="json")
    catalog["backends"][0]["capabilities"]["text_to_video"]["durations"] = {
        "min": 2, "max": 10, "values": [4]}

    with pytest.raises(ValidationError, match="either min and max, or values"):
        parse_catalog(json.dumps(catalog))
