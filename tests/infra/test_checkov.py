"""checkov (static analysis of terraform/) passes; every skipped check says why.

checkov lives in its own virtual environment (.venv/tools, built by `make
tools`, which `make test` runs first): its dependencies would clash with the
project's pins.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.infra import tfconfig

CHECKOV = Path(os.environ.get("AIPROD_CHECKOV",
                              tfconfig.REPO / ".venv" / "tools" / "bin" / "checkov"))


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} is missing: run `make tools` (make test does)")
    run = subprocess.run(
        [str(CHECKOV), "--directory", "terraform", "--framework", "terraform", "--output", "json",
         "--skip-download", "--compact"],
        cwd=tfconfig.REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
    )
    assert run.returncode in (0, 1), run.stderr[-2000:]
    parsed = json.loads(run.stdout)
    result: dict[str, Any] = parsed if isinstance(parsed, dict) else parsed[0]
    return result


def test_checkov_finds_no_failing_check(report: dict[str, Any]) -> None:
    failed = report["results"]["failed_checks"]
    assert not failed, "\n".join(
        f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})" for c in failed)


def test_checkov_really_scanned_the_configuration(report: dict[str, Any]) -> None:
    summary = report["summary"]
    assert summary["parsing_errors"] == 0
    results = report["results"]
    scanned = {c["resource"].split("[")[0]
               for c in results["passed_checks"] + results["skipped_checks"]}
    assert {"google_storage_bucket.outputs", "google_storage_bucket.source",
            "google_pubsub_topic.topic", "google_cloudfunctions2_function.fn",
            "google_project_iam_member.build"} <= scanned, sorted(scanned)


def test_every_skipped_check_carries_a_reason(report: dict[str, Any]) -> None:
    for check in report["results"]["skipped_checks"]:
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        # checkov fills in "No comment provided" for a bare #checkov:skip=ID
        where = f"{check['check_id']} on {check['resource']}: give the reason after the ID"
        assert reason != "No comment provided", where
        assert len(reason.strip()) >= 30, where
