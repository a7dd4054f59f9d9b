"""`aiprod slo [--json]`: the SLOs, their error budgets and the alerts that would
fire now (see aiprod_dev.slo_report for where the numbers come from)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from aiprod.observability import monitoring
from aiprod.wiring.config import get_settings, load_catalog
from aiprod_dev import slo_report as slo
from aiprod_dev.cli.support import firestore_client

console = Console()


def _when(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as error:
        raise click.BadParameter(f"not an ISO 8601 time: {value}") from error
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


@click.command("slo")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--monitoring", "monitoring_path", type=click.Path(exists=True, dir_okay=False,
              path_type=Path), default=monitoring.DEFAULT_MONITORING_PATH, show_default=True,
              help="The SLO and alert definitions.")
@click.option("--since", help="Count only what happened from this ISO 8601 time on "
              "(default: each SLO's and alert's own window).")
@click.option("--project", help="Google Cloud project (default: the local stack's emulator, "
              "else GOOGLE_CLOUD_PROJECT).")
@click.option("--database", help="Firestore database (default: AIPROD_FIRESTORE_DATABASE "
              "or (default)).")
def slo_command(as_json: bool, monitoring_path: Path, since: str | None, project: str | None,
                database: str | None) -> None:
    """SLIs, error budgets left and alert policies that would fire now, from the job
    records (Firestore jobs and today's budget ledger)."""
    # Thresholds written {setting: NAME} take this deployment's values (the same
    # AIPROD_DAILY_BUDGET_* the functions read).
    spec = monitoring.parse(monitoring_path.read_text()).with_settings(get_settings())
    now = dt.datetime.now(dt.UTC)
    start = _when(since)
    client, where = firestore_client(project, database)
    oldest = now - slo.widest_window(spec)
    jobs = slo.read_jobs(client, max(oldest, start) if start else oldest)
    source = slo.JobRecords(jobs, load_catalog(), slo.read_budget(client, now),
                            f"job records in Firestore ({where})", now,
                            slo.read_budget_hours(client, now))
    result = slo.report(spec, source, now, start)
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2))
        return
    _print(result)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _print(result: slo.Report) -> None:
    console.print(f"source: {result.source}; now {result.now.isoformat(timespec='seconds')}"
                  + (f"; since {result.since.isoformat()}" if result.since else ""))
    table = Table(title="SLOs")
    for column in ("SLO", "window", "good / total", "SLI", "goal", "error budget left"):
        table.add_column(column)
    for s in result.slos:
        met = "" if s.met is None else (" [green]met[/]" if s.met else " [red]missed[/]")
        table.add_row(s.display_name, f"{s.window_days} d", f"{s.good} / {s.total}",
                      _pct(s.sli) + met, _pct(s.goal), _pct(s.error_budget_left))
    console.print(table)
    table = Table(title="Alert policies")
    for column in ("alert", "severity", "condition", "now", "firing"):
        table.add_column(column)
    for a in result.alerts:
        values = ", ".join(
            ("".join(f"{k}={v} " for k, v in row["labels"].items()) + f"{row['value']:g}")
            for row in a.values) or "no data"
        firing = {None: "unknown", True: "[red]FIRING[/]", False: "no"}[a.firing]
        table.add_row(a.display_name, a.severity, a.condition,
                      "not in job records" if a.firing is None else values, firing)
    console.print(table)
