"""`aiprod`: run the local stack, drive the simulators, submit and follow jobs."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlparse

import click
import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

from aiprod.domain.catalog import Resolution
from aiprod.domain.job import TERMINAL_JOB_STATUSES
from aiprod.wiring.config import load_catalog
from aiprod_dev.cli.replay import replay_command
from aiprod_dev.cli.report import report_command
from aiprod_dev.cli.slo import slo_command
from aiprod_dev.cli.support import firestore_client, state_dir
from aiprod_dev.localstack import control
from aiprod_dev.localstack.stack import DEFAULT_PORT_BASE
from aiprod_dev.sim.core import FaultMode

console = Console()
FAULT_MODES = list(get_args(FaultMode))


def _api_url(explicit: str | None) -> str:
    if explicit:
        return explicit.rstrip("/")
    if os.environ.get("AIPROD_API_URL"):
        return os.environ["AIPROD_API_URL"].rstrip("/")
    state = control.status(state_dir())
    if state is None:
        raise click.ClickException("no local stack is running: start it with `aiprod dev up`, "
                                   "or pass --api / set AIPROD_API_URL")
    return str(state["api_url"])


def _local_key(state: dict[str, Any]) -> str | None:
    """The dev API key the local stack made for itself (in its state folder)."""
    try:
        return Path(state["api_key_file"]).read_text().strip() or None
    except (KeyError, OSError):
        return None


def _headers(api: str) -> dict[str, str]:
    """AIPROD_API_KEY, or for the local stack's own API, the stack's dev key."""
    key = os.environ.get("AIPROD_API_KEY")
    if not key:
        state = control.status(state_dir())
        if state is not None and str(state["api_url"]).rstrip("/") == api.rstrip("/"):
            key = _local_key(state)
    return {"Authorization": f"Bearer {key}"} if key else {}


def _check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            problem = response.json()
            message = f"{problem.get('title')}: {problem.get('detail')}"
        except ValueError:
            message = response.text
        raise click.ClickException(f"HTTP {response.status_code}: {message}")
    return response.json()


@click.group()
def main() -> None:
    """AIPROD: route video jobs to Runway, Veo and Replicate within a budget."""


# -- dev -----------------------------------------------------------------------------
@main.group()
def dev() -> None:
    """The local stack: emulators, functions, simulators."""


@dev.command("up")
@click.option("--port-base", type=int, default=DEFAULT_PORT_BASE, show_default=True,
              help="First of the consecutive ports the stack uses (0: any free ports).")
@click.option("--sim-latency", type=float, default=1.0, show_default=True,
              help="Seconds a simulated render takes.")
@click.option("--render-capacity", type=click.IntRange(min=1), default=None,
              help="Requests each render function serves at once in all (default: what the "
                   "deployment gives it, functions.yaml); beyond, 429 and Pub/Sub retries.")
@click.option("--lose-messages", type=click.FloatRange(0, 1), default=None, metavar="FRACTION",
              help="A fault for trying the watchdog: lose this fraction of render messages "
                   "(acknowledged, never pushed); see docs/local-stack.md.")
def dev_up(port_base: int, sim_latency: float, render_capacity: int | None,
           lose_messages: float | None) -> None:
    """Start everything; return once every part answers."""
    with console.status("starting emulators, simulators and functions..."):
        try:
            state = control.up(state_dir(), port_base, sim_latency,
                               render_capacity=render_capacity, lose_messages=lose_messages)
        except RuntimeError as error:
            raise click.ClickException(str(error)) from error
    _print_status(state)


@dev.command("lose-messages")
@click.argument("fraction", type=click.FloatRange(0, 1))
def dev_lose_messages(fraction: float) -> None:
    """Lose FRACTION of the render messages from now on (0: none), as `dev up --lose-messages`."""
    try:
        control.lose_messages(fraction, state_dir())
    except (RuntimeError, TimeoutError) as error:
        raise click.ClickException(str(error)) from error
    console.print(f"render subscriptions now lose {fraction:g} of their messages "
                  "(logged in the supervisor's log)")


@dev.command("down")
def dev_down() -> None:
    """Stop everything the stack started."""
    stopped = control.down(state_dir())
    console.print("local stack stopped" if stopped else "no local stack was running")


@dev.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def dev_status(as_json: bool) -> None:
    """Every part with its URL and pid."""
    state = control.status(state_dir())
    if as_json:
        click.echo(json.dumps(state or {"ready": False, "parts": []}, indent=2))
        return
    if state is None:
        console.print("no local stack is running (start it with `aiprod dev up`)")
        sys.exit(1)
    _print_status(state)


def _print_status(state: dict[str, Any]) -> None:
    table = Table(title=f"local stack ({state['state_dir']})")
    for column in ("part", "kind", "url", "pid", "up", "restarts"):
        table.add_column(column)
    for part in state["parts"]:
        table.add_row(part["name"], part["kind"], part["url"], str(part["pid"]),
                      "yes" if part["alive"] else "NO", str(part["restarts"]))
    console.print(table)
    console.print(f"API: {state['api_url']}    outputs: {state['output_dir']}")


# -- sim -----------------------------------------------------------------------------
def _simulator_url(backend_or_provider: str) -> str:
    catalog = load_catalog()
    provider = backend_or_provider
    if backend_or_provider in catalog.names:
        provider = catalog.get(backend_or_provider).provider
    state = control.status(state_dir())
    if state is None:
        raise click.ClickException("no local stack is running: start it with `aiprod dev up`")
    for part in state["parts"]:
        if part["name"] == f"sim-{provider}":
            return str(part["url"])
    raise click.ClickException(f"no simulator for {backend_or_provider!r}; backends: "
                               f"{', '.join(catalog.names)}")


@main.group()
def sim() -> None:
    """Drive the provider simulators."""


@sim.command("fault")
@click.argument("backend")
@click.argument("mode", type=click.Choice(FAULT_MODES))
@click.option("--rate", type=click.FloatRange(0, 1), default=1.0, show_default=True,
              help="Share of create calls that get the fault.")
def sim_fault(backend: str, mode: str, rate: float) -> None:
    """Make BACKEND's simulator misbehave (MODE ok restores it)."""
    response = httpx.post(f"{_simulator_url(backend)}/_sim/fault",
                          json={"mode": mode, "rate": rate}, timeout=10)
    console.print_json(data=_check(response))


@sim.command("stats")
@click.argument("backend")
def sim_stats(backend: str) -> None:
    """Calls and tasks the simulator has seen."""
    console.print_json(data=_check(httpx.get(f"{_simulator_url(backend)}/_sim/stats",
                                             timeout=10)))


# -- jobs ----------------------------------------------------------------------------
def _attempts_table(job: dict[str, Any]) -> Table:
    table = Table(title=f"job {job['id']}: {job['status']}")
    for column in ("#", "backend", "status", "provider task", "error", "cost USD"):
        table.add_column(column)
    for number, attempt in enumerate(job["attempts"], 1):
        error = attempt.get("error") or {}
        table.add_row(str(number), attempt["backend"], attempt["status"],
                      attempt.get("provider_task_id") or "",
                      f"{error.get('class')} {error.get('code')}: {error.get('message')}"
                      if error else "", f"{attempt['cost_usd']:.2f}")
    return table


def wait_for_job(api: str, job_id: str, timeout: float = 600.0) -> dict[str, Any]:
    """Follow a job until it ends, with a live table of its attempts."""
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = _check(httpx.get(f"{api}/v1/jobs/{job_id}", headers=_headers(api),
                                           timeout=30))
    with Live(_attempts_table(job), console=console, refresh_per_second=8) as live:
        while job["status"] not in TERMINAL_JOB_STATUSES and time.monotonic() < deadline:
            time.sleep(0.25)
            job = _check(httpx.get(f"{api}/v1/jobs/{job_id}", headers=_headers(api), timeout=30))
            live.update(_attempts_table(job))
    return job


@main.command()
@click.argument("prompt", required=False)
@click.option("--image-url", help="Image-to-video: https URL, gs:// URI or data URI.")
@click.option("--duration", "duration_seconds", type=int, default=5, show_default=True)
@click.option("--aspect-ratio", type=click.Choice(["16:9", "9:16", "1:1"]), default="16:9")
@click.option("--resolution", type=click.Choice([r.value for r in Resolution]),
              help="The frame's shorter side (default 720p).")
@click.option("--audio/--no-audio", default=False)
@click.option("--min-quality", type=click.FloatRange(0, 1))
@click.option("--max-cost", "max_cost_usd", type=float)
@click.option("--policy", type=click.Choice(["cheapest", "best_quality", "fixed", "fastest"]))
@click.option("--wait", is_flag=True, help="Follow the job until it ends.")
@click.option("--api", help="API base URL (default: the local stack's).")
def submit(prompt: str | None, image_url: str | None, duration_seconds: int,
           aspect_ratio: str, resolution: str | None, audio: bool, min_quality: float | None,
           max_cost_usd: float | None, policy: str | None, wait: bool,
           api: str | None) -> None:
    """Submit a job."""
    body = {"prompt": prompt, "image_url": image_url, "duration_seconds": duration_seconds,
            "aspect_ratio": aspect_ratio, "resolution": resolution, "audio": audio,
            "min_quality": min_quality,
            "max_cost_usd": max_cost_usd, "policy": policy}
    base = _api_url(api)
    job = _check(httpx.post(f"{base}/v1/jobs", headers=_headers(base), timeout=30,
                            json={k: v for k, v in body.items() if v is not None}))
    console.print(f"job {job['id']} {job['status']}, plan {' -> '.join(job['plan'])}, "
                  f"estimated {job['estimated_cost_usd']:.2f} USD")
    if wait:
        job = wait_for_job(base, job["id"])
        _print_outcome(job)
        if job["status"] != "SUCCEEDED":
            sys.exit(1)


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@click.option("--api", help="API base URL (default: the local stack's).")
def status(job_id: str, as_json: bool, api: str | None) -> None:
    """Show a job."""
    base = _api_url(api)
    job = _check(httpx.get(f"{base}/v1/jobs/{job_id}", headers=_headers(base), timeout=30))
    if as_json:
        click.echo(json.dumps(job, indent=2))
        return
    console.print(_attempts_table(job))
    _print_outcome(job)


@main.command()
@click.option("--api", help="API base URL (default: the local stack's).")
def backends(api: str | None) -> None:
    """The catalog (price, quality, latency, capabilities) beside what each backend's
    finished attempts showed over the statistics window."""
    base = _api_url(api)
    data = _check(httpx.get(f"{base}/v1/backends", headers=_headers(base), timeout=30))
    window = data.get("statistics", {})
    table = Table(title=f"backends (observed over {window.get('window_s', 0) / 3600:g} h; "
                        f"routing uses them from {window.get('min_samples')} samples)")
    for column in ("name", "model", "USD/s", "quality", "observed quality", "typical s",
                   "p50 s", "p95 s", "attempts", "success", "failures (charged)", "modes"):
        table.add_column(column)

    def shown(value: object) -> str:
        return "-" if value is None else str(value)

    for b in data["backends"]:
        seen = b.get("observed", {})
        failures = sum(seen.get("failures", {}).values())
        table.add_row(b["name"], b["model"], str(b["price"]["usd_per_second"]),
                      str(b["quality"]), shown(seen.get("mean_quality")),
                      str(b["typical_latency_s"]), shown(seen.get("p50_s")),
                      shown(seen.get("p95_s")), str(seen.get("attempts", 0)),
                      shown(seen.get("success_rate")),
                      f"{failures} ({seen.get('charged_failures', 0)})",
                      ", ".join(b["capabilities"]))
    console.print(table)


def _print_outcome(job: dict[str, Any]) -> None:
    console.print()
    if job["status"] == "SUCCEEDED":
        output = job["output"]
        console.print(f"[green]SUCCEEDED[/] on {job['attempts'][-1]['backend']}: "
                      f"{output['duration_seconds']:.2f} s, {output['width']}x{output['height']},"
                      f" {output['bytes']} bytes, cost {job['cost_usd']:.2f} USD\n"
                      f"output: {output['uri']}")
    else:
        console.print(f"[red]{job['status']}[/]: {job.get('status_reason') or ''}")


# -- keys ----------------------------------------------------------------------------
def _access(project: str | None, database: str | None) -> Any:
    """Firestore where the keys live (see cli_support.firestore_client); the operator
    needs roles/datastore.user there."""
    from aiprod.adapters.access import FirestoreAccess

    return FirestoreAccess(firestore_client(project, database)[0])


_project_option = click.option("--project", help="Google Cloud project (default: the local "
                               "stack's emulator, else GOOGLE_CLOUD_PROJECT).")
_database_option = click.option("--database", help="Firestore database (default: "
                                "AIPROD_FIRESTORE_DATABASE or (default)).")


@main.group()
def keys() -> None:
    """API keys: create (shown once), list, revoke."""


@keys.command("create")
@click.option("--name", required=True, help="Who or what the key is for.")
@click.option("--daily-budget", "daily_budget_usd", type=click.FloatRange(min=0, min_open=True),
              help="USD this key may commit a day (on top of the global budget).")
@click.option("--rpm", "rate_limit_rpm", type=click.IntRange(min=1),
              help="Requests a minute (default: AIPROD_DEFAULT_RATE_LIMIT_RPM, 600).")
@_project_option
@_database_option
def keys_create(name: str, daily_budget_usd: float | None, rate_limit_rpm: int | None,
                project: str | None, database: str | None) -> None:
    """Create a key. It is printed once, on stdout, alone; only its hash is stored."""
    from aiprod.services.access import create_key

    record, key = create_key(_access(project, database), name,
                             daily_budget_usd=daily_budget_usd, rate_limit_rpm=rate_limit_rpm)
    err = Console(stderr=True)
    err.print(f"created key {record.id} ({name}); store it now, it is not shown again:")
    click.echo(key)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_project_option
@_database_option
def keys_list(as_json: bool, project: str | None, database: str | None) -> None:
    """Every key: id, name, limits, whether revoked (never the key or its hash)."""
    listed = [k.public() for k in _access(project, database).list_keys()]
    if as_json:
        click.echo(json.dumps(listed, indent=2))
        return
    table = Table(title="API keys")
    for column in ("id", "name", "created", "revoked", "daily budget USD", "rpm"):
        table.add_column(column)
    for k in listed:
        table.add_row(str(k["id"]), str(k["name"]), str(k["created_at"]),
                      str(k["revoked_at"] or ""), str(k["daily_budget_usd"] or ""),
                      str(k["rate_limit_rpm"] or "default"))
    console.print(table)


@keys.command("revoke")
@click.argument("key_id")
@_project_option
@_database_option
def keys_revoke(key_id: str, project: str | None, database: str | None) -> None:
    """Revoke a key by its id (the 12 hex characters after aiprod_); it stops working at
    once."""
    import datetime as dt

    from aiprod.domain.apikeys import KEY_ID, key_id_of

    key_id = key_id_of(key_id) or key_id
    if not KEY_ID.fullmatch(key_id):
        raise click.ClickException("give the key's id (12 hex characters), as `keys list` shows")
    revoked = _access(project, database).revoke_key(key_id, dt.datetime.now(dt.UTC))
    if revoked is None:
        raise click.ClickException(f"there is no key {key_id}")
    console.print(f"key {key_id} ({revoked.name}) revoked at {revoked.revoked_at}")


# -- demo ----------------------------------------------------------------------------
@main.command()
@click.option("--fail", "fail_backend", help="Make this backend (or provider) fail, "
              "to watch the fallback.")
@click.option("--prompt", default="a red fox running through fresh snow, golden hour",
              show_default=True)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("out"),
              show_default=True)
@click.option("--keep-running", is_flag=True, help="Leave the stack up afterwards.")
def demo(fail_backend: str | None, prompt: str, out_dir: Path, keep_running: bool) -> None:
    """Start the stack, render one video end to end on the simulators, stop."""
    state_dir = Path(os.environ.get("AIPROD_DEV_STATE_DIR", ".aiprod/demo"))
    os.environ["AIPROD_DEV_STATE_DIR"] = str(state_dir)
    started = control.status(state_dir) is None
    with console.status("starting the local stack (emulators, simulators, functions)..."):
        try:
            state = control.up(state_dir, port_base=0, sim_latency_s=1.5)
        except RuntimeError as error:
            raise click.ClickException(str(error)) from error
    console.print(f"local stack up: API {state['api_url']}")
    try:
        api = str(state["api_url"])
        body: dict[str, Any] = {"prompt": prompt}
        if fail_backend:
            body |= _request_led_by(api, fail_backend, body)
            response = httpx.post(f"{_simulator_url(fail_backend)}/_sim/fault",
                                  json={"mode": "error", "rate": 1.0}, timeout=10)
            _check(response)
            console.print(f"simulator for {fail_backend} now answers every create with a 5xx")
        job = _check(httpx.post(f"{api}/v1/jobs", json=body, timeout=30,
                                headers=_headers(api)))
        console.print(f"submitted job {job['id']}: plan {' -> '.join(job['plan'])}, "
                      f"estimated {job['estimated_cost_usd']:.2f} USD")
        job = wait_for_job(api, job["id"], timeout=300)
        _print_outcome(job)
        if job["status"] != "SUCCEEDED":
            sys.exit(1)
        source = Path(urlparse(job["output"]["uri"]).path)
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / f"{job['id']}.mp4"
        shutil.copyfile(source, target)
        console.print(f"[bold]video written to {target.resolve()}[/]")
    finally:
        if started and not keep_running:
            control.down(state_dir)
            console.print("local stack stopped")


def _request_led_by(api: str, backend_or_provider: str,
                    body: dict[str, Any]) -> dict[str, Any]:
    """Request options whose plan starts with that backend and can fall back, so the
    demo shows the fallback whichever backend is made to fail."""
    catalog = load_catalog()
    wanted = {b.name for b in catalog.backends
              if backend_or_provider in (b.name, b.provider)}
    if not wanted:
        raise click.ClickException(f"no backend or provider {backend_or_provider!r}; "
                                   f"backends: {', '.join(catalog.names)}")
    for policy in ("cheapest", "best_quality", "fixed"):
        for duration in (5, 6, 8):
            options = {"policy": policy, "duration_seconds": duration}
            reply = httpx.get(f"{api}/v1/quote", params=body | options, headers=_headers(api),
                              timeout=30)
            plan = [q["backend"] for q in reply.json().get("plan", [])]
            if plan and plan[0] in wanted and len(plan) > 1:
                return options
    raise click.ClickException(f"no request starts with {backend_or_provider} and can fall "
                               "back elsewhere")


# -- budget ------------------------------------------------------------------------------
@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--api", help="API base URL (default: the local stack's).")
def budget(as_json: bool, api: str | None) -> None:
    """Today's budget: limit, spent, reserved, left, the threshold reached, and where the
    day is heading at the recent spend rate (the forecast)."""
    base = _api_url(api)
    figures = _check(httpx.get(f"{base}/v1/budget", headers=_headers(base), timeout=30))
    if as_json:
        click.echo(json.dumps(figures, indent=2))
        return
    table = Table(title=f"budget for {figures['day']} (UTC)")
    for column in ("limit", "spent", "reserved", "left", "threshold", "resets at"):
        table.add_column(column)
    table.add_row(*(f"{figures[k]:.2f} USD" for k in ("limit_usd", "spent_usd", "reserved_usd",
                                                      "left_usd")),
                  figures["threshold"], figures["resets_at"])
    console.print(table)
    scopes = [("today", figures)] + ([("this API key", figures["key"])] if figures["key"]
                                     else [])
    for label, scope in scopes:
        ahead = scope.get("forecast")
        if ahead is None:
            continue
        reached = ahead["limit_reached_at"]
        console.print(
            f"forecast {label}: {ahead['projected_usd']:.2f} USD of {scope['limit_usd']:.2f} "
            f"by 00:00 UTC at {ahead['rate_usd_per_hour']:.2f} USD/h; "
            + (f"[red]the limit is reached at {reached}[/red]" if reached
               else "the limit is not reached today"))


# -- slo -----------------------------------------------------------------------------
main.add_command(slo_command)
main.add_command(replay_command)
main.add_command(report_command)
