"""`aiprod report [--since T] [--json]`: spend per backend from the job records
(aiprod_dev.spend_report)."""

from __future__ import annotations

import datetime as dt
import json

import click
from rich.console import Console
from rich.table import Table

from aiprod_dev import slo_report
from aiprod_dev import spend_report as spend
from aiprod_dev.cli.slo import _when
from aiprod_dev.cli.support import firestore_client

console = Console()
COLUMNS = ("jobs", "attempts", "succeeded", "failures", "charged_failures", "spend_usd",
           "mean_quality", "p95_time_s", "hindsight_usd")


@click.command("report")
@click.option("--since", help="Jobs updated from this ISO 8601 time on (default: 7 days ago).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--project", help="Google Cloud project (default: the local stack's emulator, "
              "else GOOGLE_CLOUD_PROJECT).")
@click.option("--database", help="Firestore database (default: AIPROD_FIRESTORE_DATABASE "
              "or (default)).")
def report_command(since: str | None, as_json: bool, project: str | None,
                   database: str | None) -> None:
    """What jobs cost per backend, with failures billed or not, quality, p95 render
    time, and what the same jobs would have cost sent straight where they succeeded."""
    start = _when(since) or dt.datetime.now(dt.UTC) - dt.timedelta(days=7)
    client, where = firestore_client(project, database)
    result = spend.report(slo_report.read_jobs(client, start))
    if as_json:
        click.echo(json.dumps(result | {"since": start.isoformat()}, indent=2))
        return
    table = Table(title=f"spend since {start.isoformat(timespec='seconds')} ({where})")
    table.add_column("backend")
    for column in COLUMNS:
        table.add_column(column, justify="right")
    for name, row in [*result["backends"].items(), ("total", result["total"])]:
        table.add_row(name, *("-" if row[c] is None else str(row[c]) for c in COLUMNS))
    console.print(table)
