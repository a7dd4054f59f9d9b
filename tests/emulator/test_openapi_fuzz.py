"""Property-based run of the live API against its own OpenAPI document.

schemathesis (pinned in the dev extras) reads /v1/openapi.json from the running
local stack and sends several hundred generated requests across every
operation: examples, boundary values, schema-valid and schema-breaking bodies,
headers and parameters, requests without the key, and stateful sequences
(create a job, read it, cancel it). CONFIG says where they go: every example
and boundary value (the coverage phase), 100 random cases for each operation
that takes a body or a query, fewer for those whose only input is a job id
(a random id names no job), and 25 stateful scenarios. Every check runs except
`positive_data_acceptance`: some rules cannot be written in JSON Schema (a
prompt or an image_url is needed; which durations and ratios the catalog's
backends render; the key's budget), so a schema-valid request may rightly get
a documented 400, 422 or 429. Any 5xx, undocumented status, content type or
header, or a response that breaks its schema fails the test.

The run uses its own key, whose daily budget caps what its jobs may commit, and
waits for the jobs it created to finish so later tests start with idle
simulators.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from google.cloud import firestore

from tests.conftest import TERMINAL, LocalStack

pytestmark = pytest.mark.emulator

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
SEED = os.environ.get("AIPROD_FUZZ_SEED", "20261126")
MIN_REQUESTS = 500  # coverage and examples alone send about 340
# schemathesis.toml for the run (operation settings yield to phase settings, and
# both to the command line: hence no --max-examples there).
CONFIG = """
generation.max-examples = 100

[phases.stateful]
generation.max-examples = 25

[[operations]]
include-path-regex = "\\\\{job_id\\\\}"
phases.fuzzing.generation.max-examples = 20
"""


@pytest.mark.timeout(600)  # the run (up to 420 s), then its jobs finishing
def test_the_live_api_keeps_its_openapi_contract(stack: LocalStack, tmp_path: Path) -> None:
    key = stack.new_key("schemathesis", daily_budget_usd=10, rate_limit_rpm=1_000_000)
    report = tmp_path / "schemathesis.json"
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    started = time.monotonic()
    run = subprocess.run(
        [str(SCHEMATHESIS), "--no-color", "--config-file", str(config), "run",
         f"{stack.api}/v1/openapi.json", "--header", f"Authorization: Bearer {key}",
         "--checks", "all", "--exclude-checks", "positive_data_acceptance",
         "--workers", "2", "--seed", SEED,
         "--request-timeout", "30",
         "--report", "json", "--report-json-path", str(report)],
        capture_output=True, text=True, timeout=420, cwd=tmp_path)
    elapsed = time.monotonic() - started
    output = run.stdout[-6000:] + run.stderr[-2000:]
    summary = json.loads(report.read_text())

    assert run.returncode == 0, output
    assert summary["failures"] == [], output
    assert summary["errors"] == [], output
    assert summary["test_cases"]["generated"] >= MIN_REQUESTS, summary["test_cases"]
    assert {name: phase["status"] for name, phase in summary["phases"].items()} == dict.fromkeys(
        ("examples", "coverage", "fuzzing", "stateful"), "success"), summary["phases"]
    operations = summary["operations"]
    assert operations["tested"] == operations["total"] >= 12, operations
    # A figure, not a pass/fail bound (timing on a shared 2-core machine is noise):
    # CONFIG's example counts are what keep the run's cost in check.
    print(f"schemathesis: {summary['test_cases']['generated']} cases over "
          f"{operations['total']} operations in {elapsed:.0f} s")

    # Let the jobs the run created finish before other tests count simulator calls.
    owner = f"key:{key.split('_')[1]}"
    jobs = stack.firestore().collection("jobs").where(
        filter=firestore.FieldFilter("owner", "==", owner))
    deadline = time.monotonic() + 90
    while any((d.to_dict() or {}).get("status") not in TERMINAL for d in jobs.stream()):
        assert time.monotonic() < deadline, "the run's jobs did not finish"
        time.sleep(0.5)
