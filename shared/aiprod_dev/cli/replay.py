"""`aiprod replay --trace T --profile P [--seed N] [--json]`: routing policies against a
simulated world and the hindsight optimum, in-process (aiprod_dev.replay)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from aiprod.wiring.config import get_settings, load_catalog
from aiprod_dev import replay as engine

console = Console()
FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command("replay")
@click.option("--trace", "trace_path", type=FILE, required=True,
              help='JSON lines: {"at_s": 12.5, "request": {<a POST /v1/jobs body>}}.')
@click.option("--profile", "profile_path", type=FILE, required=True,
              help="YAML: each backend's success, charged_on_failure, quality, latency_s, "
                   "changes.")
@click.option("--seed", type=int, default=1, show_default=True,
              help="Seeds every outcome: each policy meets the same world.")
@click.option("--min-samples", type=click.IntRange(min=1), default=None,
              help="Samples before observations count (default: AIPROD_ROUTING_MIN_SAMPLES).")
@click.option("--catalog", "catalog_path", type=FILE, default=None,
              help="The backend catalog (default: AIPROD_CATALOG, backends.yaml).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def replay_command(trace_path: Path, profile_path: Path, seed: int, min_samples: int | None,
                   catalog_path: Path | None, as_json: bool) -> None:
    """Replay a trace of jobs under the fixed, catalog-only and learning policies, and
    the hindsight optimum."""
    settings = get_settings()
    catalog = load_catalog(catalog_path) if catalog_path else settings.catalog()
    try:
        jobs = engine.load_trace(trace_path)
        profile = engine.load_profile(profile_path, catalog)
    except ValueError as error:
        raise click.BadParameter(str(error)) from error
    started = time.perf_counter()
    result = engine.replay(jobs, profile, catalog, seed,
                           min_samples or settings.routing_min_samples,
                           settings.stats_window_s, settings.stats_bucket_s)
    elapsed = time.perf_counter() - started
    if as_json:
        click.echo(json.dumps(result.summary()))
        return
    summary = result.summary()
    rows = [*summary["policies"].items(), ("hindsight", summary["hindsight"])]
    table = Table(title=f"{len(jobs)} jobs, seed {seed} ({elapsed:.1f} s)")
    columns = ("jobs", "succeeded", "failed", "spend_usd", "mean_quality", "under_floor",
               "p95_time_s")
    table.add_column("policy")
    for column in columns:
        table.add_column(column, justify="right")
    for name, figures in rows:
        table.add_row(name, *(str(figures[c]) for c in columns))
    console.print(table)
    targets = result.targets()
    console.print(f"learned spends {targets['spend_vs_hindsight']}x the hindsight optimum; "
                  f"{targets['under_floor_not_in_catalog']} videos under their floor that "
                  f"catalog-only routing would not have delivered; "
                  f"{targets['succeeded_vs_catalog']:+d} successes against catalog-only "
                  f"({targets['at_floor_vs_catalog']:+d} at or above their floor)")
