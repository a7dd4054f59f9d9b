"""`aiprod replay`: its arithmetic on small traces whose figures are worked out by hand,
in deterministic worlds (success 0 or 1, no spread in quality or latency)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from aiprod.domain.job import JobRequest
from aiprod.wiring.config import load_catalog
from aiprod_dev import replay as engine
from aiprod_dev.cli.main import main

CATALOG = load_catalog()
# 4 s of video: replicate-seedance 0.32 USD, veo-31-fast 0.40, runway-gen45 0.48.


def _world(**backends: dict[str, Any]) -> dict[str, engine.BackendWorld]:
    base = {"success": 1.0, "charged_on_failure": 0.0}
    return {name: engine.BackendWorld.model_validate(base | spec)
            for name, spec in backends.items()}


def _fixed(quality: float, latency: float, **more: Any) -> dict[str, Any]:
    return {"quality": {"mean": quality, "sd": 0}, "latency_s": {"p50": latency, "p95": latency}
            } | more


def _trace(count: int, **request: Any) -> list[engine.TraceJob]:
    body = {"prompt": "fox", "duration_seconds": 4} | request
    return [engine.TraceJob(1000.0 * i, JobRequest.model_validate(body))
            for i in range(count)]


def test_a_failing_cheap_backend_is_learned_after_min_samples_attempts() -> None:
    world = _world(**{
        "replicate-seedance": _fixed(0.8, 10, success=0.0, charged_on_failure=1.0),
        "veo-31-fast": _fixed(0.88, 100), "runway-gen45": _fixed(0.9, 50)})
    result = engine.replay(_trace(5), world, CATALOG, seed=1, min_samples=2).summary()
    fixed, catalog, learned = (result["policies"][p] for p in ("fixed", "catalog", "learned"))
    # fixed: Runway first, every time: 5 x 0.48.
    assert fixed == {"jobs": 5, "succeeded": 5, "failed": 0, "spend_usd": 2.4,
                     "mean_quality": 0.9, "under_floor": 0, "p95_time_s": 50.0}
    # catalog: Replicate first (fails, billed 0.32, 10 s), then Veo (0.40, 100 s).
    assert catalog == {"jobs": 5, "succeeded": 5, "failed": 0, "spend_usd": 3.6,
                       "mean_quality": 0.88, "under_floor": 0, "p95_time_s": 110.0}
    # learned: two jobs like catalog's (2 x 0.72), then Replicate has failed its 2 samples
    # and Veo first costs 0.40 (3 x 0.40): 2.64; the p95 of 110, 110, 100, 100, 100 is 110.
    assert learned == {"jobs": 5, "succeeded": 5, "failed": 0, "spend_usd": 2.64,
                       "mean_quality": 0.88, "under_floor": 0, "p95_time_s": 110.0}
    # hindsight: straight to Veo, the cheapest that succeeds: 5 x 0.40.
    assert result["hindsight"] == {"jobs": 5, "succeeded": 5, "failed": 0, "spend_usd": 2.0,
                                   "mean_quality": 0.88, "under_floor": 0,
                                   "p95_time_s": 100.0}


def test_low_scores_take_a_backend_out_of_jobs_with_a_higher_floor() -> None:
    world = _world(**{"replicate-seedance": _fixed(0.4, 10), "veo-31-fast": _fixed(0.88, 100),
                      "runway-gen45": _fixed(0.9, 50)})
    replay = engine.replay(_trace(4, min_quality=0.6), world, CATALOG, seed=1, min_samples=2)
    result = replay.summary()
    catalog, learned = result["policies"]["catalog"], result["policies"]["learned"]
    # catalog trusts Replicate's 0.8: four videos scoring 0.4, under the 0.6 floor.
    assert (catalog["spend_usd"], catalog["under_floor"], catalog["mean_quality"]) == (
        1.28, 4, 0.4)
    # learned: two like catalog, then Replicate's observed 0.4 leaves the plan: Veo.
    # 2 x 0.32 + 2 x 0.40 = 1.44; quality (0.4 + 0.4 + 0.88 + 0.88) / 4 = 0.64.
    assert (learned["spend_usd"], learned["under_floor"], learned["mean_quality"]) == (
        1.44, 2, 0.64)
    assert (result["hindsight"]["spend_usd"], result["hindsight"]["under_floor"]) == (1.6, 0)
    assert replay.targets() == {"spend_vs_hindsight": 0.9, "under_floor_not_in_catalog": 0,
                                "succeeded_vs_catalog": 0, "at_floor_vs_catalog": 2}


def test_a_job_no_backend_can_take_counts_as_failed_everywhere() -> None:
    world = _world(**{name: _fixed(0.9, 10) for name in CATALOG.names})
    result = engine.replay(_trace(2, duration_seconds=40), world, CATALOG, seed=1,
                           min_samples=2).summary()
    for figures in [*result["policies"].values(), result["hindsight"]]:
        assert figures == {"jobs": 2, "succeeded": 0, "failed": 2, "spend_usd": 0,
                           "mean_quality": None, "under_floor": 0, "p95_time_s": None}


def test_drift_applies_from_its_time_and_every_policy_meets_the_same_world() -> None:
    spec = engine.BackendWorld.model_validate({
        "success": 0.9, "quality": {"mean": 0.8, "sd": 0.1}, "latency_s": {"p50": 60, "p95": 120},
        "changes": [{"at_s": 100, "success": 0.1}, {"at_s": 50, "quality": {"mean": 0.3}}]})
    assert spec.at(49).success == 0.9
    assert spec.at(50).quality.mean == 0.3
    assert spec.at(100).success == 0.1
    assert spec.at(100).quality.mean == 0.3
    world = engine.World({name: spec for name in CATALOG.names}, seed=7)
    job = _trace(1)[0]
    first = world.outcome(0, job, "veo-31-fast")
    again = engine.World({name: spec for name in CATALOG.names}, seed=7)
    again.outcome(0, job, "runway-gen45")  # drawn in another order: the same outcome
    assert again.outcome(0, job, "veo-31-fast") == first
    assert engine.World(world.profile, seed=8).outcome(0, job, "veo-31-fast") != first


def test_the_command_prints_the_documented_json(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text("\n".join(json.dumps({"at_s": 10.0 * i, "request": {"prompt": "fox"}})
                               for i in range(20)) + "\n")
    profile = tmp_path / "p.yaml"
    profile.write_text("\n".join(
        f"{name}:\n  success: 0.9\n  charged_on_failure: 0.5\n  quality: {{mean: 0.8, sd: 0.05}}"
        f"\n  latency_s: {{p50: 60, p95: 120}}" for name in CATALOG.names))
    runner = CliRunner()
    args = ["replay", "--trace", str(trace), "--profile", str(profile), "--seed", "3", "--json"]
    out = runner.invoke(main, args)
    assert out.exit_code == 0, out.output
    body = json.loads(out.output)
    assert set(body) == {"policies", "hindsight"}
    assert set(body["policies"]) == {"fixed", "catalog", "learned"}
    for figures in [*body["policies"].values(), body["hindsight"]]:
        assert set(figures) == {"jobs", "succeeded", "failed", "spend_usd", "mean_quality",
                                "under_floor", "p95_time_s"}
        assert figures["jobs"] == 20
    assert json.loads(runner.invoke(main, args).output) == body  # seeded: the same world


def test_a_profile_names_the_worlds_backends_and_only_catalog_ones(tmp_path: Path) -> None:
    profile = tmp_path / "p.yaml"
    one = "  success: 1\n  quality: {mean: 0.9}\n  latency_s: {p50: 1, p95: 2}\n"
    profile.write_text("runway-gen45:\n" + one)
    world = engine.load_profile(profile, CATALOG)
    assert list(world) == ["runway-gen45"]
    result = engine.replay(_trace(3), world, CATALOG, seed=1, min_samples=2).summary()
    assert result["policies"]["catalog"]["succeeded"] == 3  # routed within the world only
    profile.write_text("runway-gen45:\n" + one + "sora-2:\n" + one)
    with pytest.raises(ValueError, match="unknown"):
        engine.load_profile(profile, CATALOG)
