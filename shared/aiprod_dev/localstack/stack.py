"""Builds and supervises the whole local stack (run by `aiprod dev up` as a
background supervisor process; see control.py)."""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from aiprod import REPO_ROOT
from aiprod.domain.catalog import Catalog
from aiprod.wiring.config import Settings, load_catalog
from aiprod_dev.localstack.delivery import MessageLoss, PushRelay
from aiprod_dev.localstack.processes import ManagedProcess, free_port
from aiprod_dev.topology import Function, topology

logger = logging.getLogger(__name__)
PROJECT = "aiprod-local"
FUNCTIONS_SOURCE = REPO_ROOT / "functions" / "main.py"
STATE_FILE = "state.json"
FAULTS_FILE = "faults.json"  # `aiprod dev lose-messages` writes it; the supervisor applies it
# Secrets the stack makes for itself, in its state folder (mode 0600), never logged:
API_KEY_FILE = "api-key"                     # a dev API key for the CLI and the demo
WEBHOOK_KEY_FILE = "webhook-signing-key"     # the whsec_ key webhooks are signed with
DEV_KEY_RPM = 100_000
DEFAULT_PORT_BASE = 8700
PROVIDERS = ("runway", "veo", "replicate")
# What the simulators accept: well-formed, worthless outside this machine.
LOCAL_CREDENTIALS = {
    "AIPROD_RUNWAY_API_KEY": "key_" + "0" * 128,
    "AIPROD_REPLICATE_API_TOKEN": "r8_local_simulator",
    "AIPROD_VEO_ACCESS_TOKEN": "local-simulator",
}
# The credentials each provider's render deployment holds, as Terraform grants them
# (terraform/topology.tf: provider_secrets, and Vertex AI access for Veo's); no other
# function gets any. tests/infra pins this against Terraform's own locals.
PROVIDER_CREDENTIALS = {
    "runway": ("AIPROD_RUNWAY_API_KEY",),
    "replicate": ("AIPROD_REPLICATE_API_TOKEN",),
    "veo": ("AIPROD_VEO_ACCESS_TOKEN",),
}
WEBHOOK_CREDENTIALS = ("AIPROD_WEBHOOK_SIGNING_KEY",)  # the notifier's, only
GCLOUD_HELP = (
    "The local stack needs the Google Cloud CLI with its Pub/Sub and Firestore emulators "
    "and Java 17+. Install the gcloud components `pubsub-emulator` and "
    "`cloud-firestore-emulator` (`gcloud components install pubsub-emulator "
    "cloud-firestore-emulator`, or the Debian packages google-cloud-cli-pubsub-emulator "
    "and google-cloud-cli-firestore-emulator).")


def credentials_for(function: Function, catalog: Catalog) -> tuple[str, ...]:
    """The secret variables a function's deployment gets: a render function its own
    provider's, the notifier the webhook signing key, every other function none (so the
    API and the dead-letter handler cannot reach a provider, as in production)."""
    backend = dict(function.env).get("BACKEND")
    if function.target == "render" and backend:
        return PROVIDER_CREDENTIALS[catalog.get(backend).provider]
    if function.target == "notifier":
        return WEBHOOK_CREDENTIALS
    return ()


class MissingTooling(RuntimeError):
    pass


def check_tooling() -> None:
    gcloud = shutil.which("gcloud")
    if gcloud is None or shutil.which("java") is None:
        raise MissingTooling(GCLOUD_HELP)
    platform = Path(gcloud).resolve().parent.parent / "platform"
    missing = [c for c in ("pubsub-emulator", "cloud-firestore-emulator")
               if not (platform / c).exists()]
    if platform.exists() and missing:
        raise MissingTooling(f"missing gcloud components: {', '.join(missing)}. {GCLOUD_HELP}")


@dataclass(frozen=True)
class StackOptions:
    state_dir: Path
    port_base: int = DEFAULT_PORT_BASE  # 0: pick free ports
    sim_latency_s: float = 1.0
    poll_interval_s: float = 0.25
    # Requests each render function serves at once in all (None: what the deployment
    # gives it, max_instances x concurrency from functions.yaml); beyond, 429.
    render_capacity: int | None = None
    # Delivery attempts before a message is dead-lettered (None: functions.yaml's).
    max_delivery_attempts: int | None = None
    # Production's retry backoff (functions.yaml) times this: the simulators render in
    # seconds what providers render in minutes.
    delivery_time_scale: float = 1 / 60
    # Dev-only fault: the fraction of render messages lost (delivery.py, MessageLoss).
    lose_messages: float = 0.0


class Ports:
    """Fixed offsets from a documented base, or free ports when base is 0."""

    def __init__(self, base: int) -> None:
        self._base = base
        self._next = 0

    def take(self) -> int:
        if self._base == 0:
            return free_port()
        port = self._base + self._next
        self._next += 1
        return port


class Stack:
    def __init__(self, options: StackOptions, catalog: Catalog | None = None) -> None:
        self.options = options
        self.catalog = catalog or load_catalog()
        self.state_dir = options.state_dir.resolve()
        self.logs = self.state_dir / "logs"
        ports = Ports(options.port_base)
        self.pubsub_port = ports.take()
        self.firestore_port = ports.take()
        self.env = {
            "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{self.pubsub_port}",
            "FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{self.firestore_port}",
            "GOOGLE_CLOUD_PROJECT": PROJECT,
        }
        self.emulators = [
            ManagedProcess(
                "pubsub-emulator", "emulator",
                ["gcloud", "beta", "emulators", "pubsub", "start", f"--project={PROJECT}",
                 f"--host-port=127.0.0.1:{self.pubsub_port}", "--quiet"],
                url=f"http://127.0.0.1:{self.pubsub_port}",
                ready_url=f"http://127.0.0.1:{self.pubsub_port}/v1/projects/{PROJECT}/topics",
                log_path=self.logs / "pubsub-emulator.log"),
            ManagedProcess(
                "firestore-emulator", "emulator",
                ["gcloud", "emulators", "firestore", "start",
                 f"--host-port=127.0.0.1:{self.firestore_port}", "--quiet"],
                url=f"http://127.0.0.1:{self.firestore_port}",
                ready_url=f"http://127.0.0.1:{self.firestore_port}/",
                log_path=self.logs / "firestore-emulator.log"),
        ]
        self.simulators: dict[str, ManagedProcess] = {}
        for provider in PROVIDERS:
            port = ports.take()
            self.simulators[provider] = ManagedProcess(
                f"sim-{provider}", "simulator",
                [sys.executable, "-m", "aiprod_dev.sim", "--provider", provider,
                 "--host", "127.0.0.1", "--port", str(port),
                 "--latency", str(options.sim_latency_s)],
                url=f"http://127.0.0.1:{port}",
                ready_url=f"http://127.0.0.1:{port}/_sim/stats",
                log_path=self.logs / f"sim-{provider}.log")
        # Quick local tunables; the operator's AIPROD_* variables override them; the
        # stack's own wiring (emulators, simulators, credentials, storage) wins last.
        tunables = {
            "AIPROD_POLL_INTERVAL_S": str(options.poll_interval_s),
            "AIPROD_CREATE_TIMEOUT_S": "10",
            "AIPROD_TRANSIENT_RETRY_INITIAL_S": "0.2",
            "AIPROD_TRANSIENT_RETRY_BUDGET_S": "2",
            "AIPROD_RENDER_DEADLINE_S": "60",
            # The watchdog every 10 s; a job that has not moved for 30 s (3 x the
            # local subscriptions' 10 s maximum retry backoff) is re-driven, an open
            # attempt only once its lease (10 + 60 + 60 = 130 s here) has run out too.
            "AIPROD_WATCHDOG_INTERVAL_S": "10",
            "AIPROD_WATCHDOG_STALE_S": "30",
        }
        passed = {k: v for k, v in os.environ.items()
                  if k.startswith("AIPROD_") and not k.startswith("AIPROD_DEV_")}
        self.webhook_signing_key = (passed.get("AIPROD_WEBHOOK_SIGNING_KEY")
                                    or "whsec_" + base64.b64encode(secrets.token_bytes(32))
                                    .decode())
        credentials = LOCAL_CREDENTIALS | {
            "AIPROD_WEBHOOK_SIGNING_KEY": self.webhook_signing_key}
        without_secrets = {k: v for k, v in passed.items() if k not in credentials}
        self.function_env = tunables | without_secrets | self.env | {
            "AIPROD_RUNWAY_BASE_URL": self.simulators["runway"].url,
            "AIPROD_REPLICATE_BASE_URL": self.simulators["replicate"].url,
            "AIPROD_VEO_BASE_URL": self.simulators["veo"].url,
            "AIPROD_OUTPUT_URI": (self.state_dir / "store").as_uri(),
            "AIPROD_CATALOG": str(REPO_ROOT / "backends.yaml"),
            "PYTHONUNBUFFERED": "1",
        }
        self.settings = Settings()
        self.topology = topology(self.catalog, self.settings)
        self.functions: dict[str, ManagedProcess] = {}
        self.capacity: dict[str, int] = {}
        for function in self.topology.functions:
            port = ports.take()
            self.capacity[function.name] = self._capacity(function)
            self.functions[function.name] = ManagedProcess(
                function.name, "function",
                # functions-framework's app and server behind the deployment's capacity
                # (serve.py: dev only, 429 beyond it like Cloud Run)
                [sys.executable, "-m", "aiprod_dev.localstack.serve", f"--target={function.target}",
                 f"--source={FUNCTIONS_SOURCE}", "--host=127.0.0.1", f"--port={port}",
                 f"--capacity={self.capacity[function.name]}"],
                url=f"http://127.0.0.1:{port}",
                ready_url=f"http://127.0.0.1:{port}/healthz" if function.target == "api"
                else f"http://127.0.0.1:{port}/",
                answers_any_status=function.target != "api",
                log_path=self.logs / f"{function.name}.log",
                # Credentials not granted are blanked, even if the shell running the
                # stack has them set (processes inherit its environment).
                env=self.function_env | dict(function.env) | dict.fromkeys(credentials, "") | {
                    name: credentials[name]
                    for name in credentials_for(function, self.catalog)})
        self.relays: list[PushRelay] = []
        self.losses: list[MessageLoss] = []  # one per render subscription
        self._faults_seen: float | None = None  # the faults file's mtime last applied
        self._stopping = threading.Event()

    def _capacity(self, function: Function) -> int:
        """What the deployment serves at once: every instance full (functions.yaml)."""
        capacity = function.sizing.capacity
        if function.target == "render" and self.options.render_capacity is not None:
            capacity = min(capacity, self.options.render_capacity)
        return capacity

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        check_tooling()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / FAULTS_FILE).unlink(missing_ok=True)  # a previous run's
        for part in [*self.emulators, *self.simulators.values(), *self.functions.values()]:
            part.start()
        for emulator in self.emulators:
            emulator.wait_ready(60)
        self._create_topology()
        self._write_secrets()
        for part in [*self.simulators.values(), *self.functions.values()]:
            part.wait_ready(60 if part.kind == "function" else 30)
        for relay in self.relays:
            relay.start()
        self.write_state(ready=True)

    def _create_topology(self) -> None:
        from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient

        os.environ.update(self.env)
        publisher = PublisherClient()
        subscriber = SubscriberClient()
        for topic in self.topology.topics:
            publisher.create_topic(name=publisher.topic_path(PROJECT, topic))
        for sub in self.topology.subscriptions:
            function = self.functions[sub.function]
            topic_path = publisher.topic_path(PROJECT, sub.topic)
            ack_deadline = 120 if sub.function.startswith("render-") else 30
            # A pull subscription and a relay that pushes like production (delivery.py:
            # the emulator's own push holds at most 2 requests in flight and stops
            # redelivering under a retry policy).
            request: dict[str, Any] = {
                "name": subscriber.subscription_path(PROJECT, sub.name),
                "topic": topic_path,
                "ack_deadline_seconds": ack_deadline,
            }
            attempts = sub.delivery.max_delivery_attempts
            if sub.dead_letter_topic and attempts:
                request["dead_letter_policy"] = {
                    "dead_letter_topic": publisher.topic_path(PROJECT, sub.dead_letter_topic),
                    "max_delivery_attempts": self.options.max_delivery_attempts or attempts}
            subscriber.create_subscription(request=request)
            # Only render messages are ever lost (the fault the watchdog answers for).
            loss = None
            if sub.function.startswith("render-"):
                loss = MessageLoss(self.options.lose_messages)
                self.losses.append(loss)
            # The path carries the topic, so the CloudEvent `source` names it.
            self.relays.append(PushRelay(
                subscriber, request["name"], f"{function.url}/{topic_path}", ack_deadline,
                sub.delivery, self.options.delivery_time_scale, loss))

    def _write_secrets(self) -> None:
        """A dev API key (created in the emulator) and the webhook signing key, each in
        a file only this user can read; the CLI and the demo use the first."""
        from google.cloud import firestore

        from aiprod.adapters.access import FirestoreAccess
        from aiprod.services.access import create_key

        _, key = create_key(FirestoreAccess(firestore.Client(project=PROJECT)), "local-dev",
                            rate_limit_rpm=DEV_KEY_RPM)
        for name, value in ((API_KEY_FILE, key), (WEBHOOK_KEY_FILE, self.webhook_signing_key)):
            path = self.state_dir / name
            path.unlink(missing_ok=True)
            path.touch(mode=0o600)
            path.write_text(value + "\n")

    def supervise(self) -> None:
        """Like the platform starting a new instance: restart a function that dies.
        Like Cloud Scheduler: call the watchdog every AIPROD_WATCHDOG_INTERVAL_S."""
        threading.Thread(target=self._watchdog_timer, name="watchdog-timer",
                         daemon=True).start()
        while not self._stopping.wait(0.5):
            for function in self.functions.values():
                if not function.alive() and not self._stopping.is_set():
                    # The whole instance is gone, as on the platform: gunicorn's worker
                    # would outlive its killed master, holding the port and finishing
                    # its requests.
                    function.kill_group()
                    function.restarts += 1
                    function.start()
                    self.write_state(ready=True)
            self._apply_faults()

    def set_message_loss(self, fraction: float) -> None:
        for loss in self.losses:
            loss.set(fraction)
        logger.warning(json.dumps({"event": "message_loss_set", "fraction": fraction}))

    def _apply_faults(self) -> None:
        """Apply the faults file when it changed (`aiprod dev lose-messages`)."""
        path = self.state_dir / FAULTS_FILE
        try:
            mtime = path.stat().st_mtime
            if mtime == self._faults_seen:
                return
            self._faults_seen = mtime
            fraction = float(json.loads(path.read_text())["lose_messages"])
            self.set_message_loss(fraction)
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError) as error:
            logger.error("ignored %s: %s", path, error)
            return
        self.write_state(ready=True)

    def _watchdog_timer(self) -> None:
        """POST to the watchdog function on its interval, as Cloud Scheduler does (a
        failed call is not retried: the next tick runs it again)."""
        interval = float(self.function_env["AIPROD_WATCHDOG_INTERVAL_S"])
        url = self.functions["watchdog"].url
        with httpx.Client(timeout=max(interval, 30.0)) as client:
            while not self._stopping.wait(interval):
                try:
                    client.post(url)
                except httpx.HTTPError:
                    continue  # restarting, or a run longer than the timeout

    def stop(self) -> None:
        self._stopping.set()
        for relay in self.relays:
            relay.stop()
        parts = [*self.functions.values(), *self.simulators.values(), *self.emulators]
        threads = [threading.Thread(target=p.stop) for p in parts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        (self.state_dir / STATE_FILE).unlink(missing_ok=True)

    # -- state -----------------------------------------------------------------------
    def parts(self) -> list[ManagedProcess]:
        return [*self.emulators, *self.simulators.values(), *self.functions.values()]

    def write_state(self, ready: bool) -> None:
        state = {
            "ready": ready,
            "project": PROJECT,
            "supervisor_pid": os.getpid(),
            "state_dir": str(self.state_dir),
            "api_url": self.functions["api"].url,
            "output_dir": str(self.state_dir / "store"),
            "api_key_file": str(self.state_dir / API_KEY_FILE),
            "webhook_signing_key_file": str(self.state_dir / WEBHOOK_KEY_FILE),
            "env": self.env,
            "capacity": self.capacity,
            "lose_messages": self.losses[0].fraction if self.losses else 0.0,
            "parts": [{"name": p.name, "kind": p.kind, "url": p.url, "pid": p.pid,
                       "alive": p.alive(), "restarts": p.restarts, "log": str(p.log_path)}
                      for p in self.parts()],
            # How to start one more instance of a function (local simulator tokens only).
            "functions": {name: {"argv": f.argv, "env": _without_secrets(f.env)}
                          for name, f in self.functions.items()},
        }
        path = self.state_dir / STATE_FILE
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(state, indent=2))
        partial.replace(path)


def _without_secrets(env: dict[str, str]) -> dict[str, str]:
    """Keys, tokens and secrets stay out of the state file."""
    return {k: v for k, v in env.items()
            if not any(word in k for word in ("KEY", "TOKEN", "SECRET", "PASSWORD"))}


def run_supervisor(options: StackOptions) -> None:
    # The supervisor's own log (supervisor.log): the relays' faults and redeliveries.
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("aiprod_dev").setLevel(logging.INFO)
    stack = Stack(options)

    def on_signal(signum: int, _: object) -> None:
        stack._stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        stack.start()
        stack.supervise()
    except Exception as error:
        (options.state_dir / "error.txt").write_text(f"{type(error).__name__}: {error}\n")
        raise
    finally:
        stack.stop()
