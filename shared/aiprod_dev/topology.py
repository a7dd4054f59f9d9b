"""Topics, subscriptions and functions derived from the catalog, sized by
functions.yaml.

The local stack builds exactly this in the emulator; Terraform derives the same
shape from backends.yaml and functions.yaml with yamldecode (terraform/topology.tf).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from aiprod import REPO_ROOT
from aiprod.domain.catalog import Catalog
from aiprod.wiring.config import Settings

DEAD_LETTER_SUFFIX = "-dead-letter"
FUNCTIONS_FILE = REPO_ROOT / "functions.yaml"


@dataclass(frozen=True)
class Sizing:
    """What the deployment gives each function of a kind (functions.yaml `kinds`)."""

    memory: str
    cpu: str
    timeout_seconds: int
    min_instances: int
    max_instances: int
    concurrency: int   # requests one instance serves at once

    @property
    def capacity(self) -> int:
        """Requests in flight before the platform answers 429 (every instance busy)."""
        return self.max_instances * self.concurrency


@dataclass(frozen=True)
class Delivery:
    """A push subscription's retry policy (functions.yaml `delivery`)."""

    minimum_backoff_s: float
    maximum_backoff_s: float
    max_delivery_attempts: int | None = None   # None: no dead-letter policy

    @property
    def configured_retry_s(self) -> float:
        """The retry window the policy configures: the least its backoff allows,
        whatever its growth (every configured wait is at least the minimum backoff).
        Best effort, not a guarantee: Pub/Sub's delay between deliveries "can be more
        or less than configured backoff"
        (https://cloud.google.com/java/docs/reference/google-cloud-pubsub/latest/com.google.pubsub.v1.RetryPolicy)."""
        return ((self.max_delivery_attempts or 1) - 1) * self.minimum_backoff_s


@dataclass(frozen=True)
class FunctionsSpec:
    kinds: dict[str, Sizing]
    delivery: dict[str, Delivery]


@functools.cache
def load_functions_spec(path: Path = FUNCTIONS_FILE) -> FunctionsSpec:
    raw: dict[str, Any] = yaml.safe_load(path.read_text())
    return FunctionsSpec(
        kinds={kind: Sizing(memory=str(spec["memory"]), cpu=str(spec["cpu"]),
                            timeout_seconds=int(spec["timeout_seconds"]),
                            min_instances=int(spec["min_instances"]),
                            max_instances=int(spec["max_instances"]),
                            concurrency=int(spec["concurrency"]))
               for kind, spec in raw["kinds"].items()},
        delivery={kind: Delivery(**spec) for kind, spec in raw["delivery"].items()})


@dataclass(frozen=True)
class Function:
    name: str          # process / deployment name
    target: str        # entry point in functions/main.py; also its kind in functions.yaml
    env: tuple[tuple[str, str], ...] = ()

    @property
    def sizing(self) -> Sizing:
        return load_functions_spec().kinds[self.target]


@dataclass(frozen=True)
class PushSubscription:
    name: str
    topic: str
    function: str                   # the Function.name it pushes to
    dead_letter_topic: str | None   # None for subscriptions on dead-letter topics
    kind: str = ""                  # the kind of function it feeds (its retry policy)

    @property
    def delivery(self) -> Delivery:
        return load_functions_spec().delivery[self.kind]


@dataclass(frozen=True)
class Topology:
    topics: tuple[str, ...]
    functions: tuple[Function, ...]
    subscriptions: tuple[PushSubscription, ...]


def topology(catalog: Catalog, settings: Settings) -> Topology:
    functions = [Function("api", "api"), Function("intake", "intake"),
                 Function("dead-letter", "dead_letter"), Function("notifier", "notifier"),
                 # HTTP, on a schedule (Cloud Scheduler; the local stack's timer)
                 Function("watchdog", "watchdog")]
    subscriptions = [PushSubscription("intake", settings.intake_topic, "intake",
                                      settings.intake_topic + DEAD_LETTER_SUFFIX, "intake"),
                     # webhooks: every job event reaches the notifier, which sends the
                     # terminal ones and raises on a failed delivery (Pub/Sub retries)
                     PushSubscription("notifier", settings.events_topic, "notifier",
                                      settings.events_topic + DEAD_LETTER_SUFFIX, "notifier")]
    for backend in catalog.backends:
        name = f"render-{backend.name}"
        functions.append(Function(name, "render", (("BACKEND", backend.name),)))
        subscriptions.append(PushSubscription(name, backend.topic, name,
                                              backend.topic + DEAD_LETTER_SUFFIX, "render"))
    work_topics = [s.topic for s in subscriptions]
    dead_letter_topics = [s.dead_letter_topic for s in subscriptions if s.dead_letter_topic]
    for topic in dead_letter_topics:
        subscriptions.append(PushSubscription(topic, topic, "dead-letter", None, "dead_letter"))
    topics = dict.fromkeys([*work_topics, *dead_letter_topics, settings.events_topic])
    return Topology(
        topics=tuple(topics),
        functions=tuple(functions),
        subscriptions=tuple(subscriptions),
    )
