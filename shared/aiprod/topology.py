"""Topics, subscriptions and functions derived from the catalog.

The local stack builds exactly this in the emulator; Terraform derives the same
shape from backends.yaml with yamldecode (terraform/pubsub.tf).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiprod.catalog import Catalog
from aiprod.config import Settings

DEAD_LETTER_SUFFIX = "-dead-letter"
MAX_DELIVERY_ATTEMPTS = 5


@dataclass(frozen=True)
class Function:
    name: str          # process / deployment name
    target: str        # entry point in functions/main.py
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class PushSubscription:
    name: str
    topic: str
    function: str                   # the Function.name it pushes to
    dead_letter_topic: str | None   # None for subscriptions on dead-letter topics


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
                                      settings.intake_topic + DEAD_LETTER_SUFFIX),
                     # webhooks: every job event reaches the notifier, which sends the
                     # terminal ones and raises on a failed delivery (Pub/Sub retries)
                     PushSubscription("notifier", settings.events_topic, "notifier",
                                      settings.events_topic + DEAD_LETTER_SUFFIX)]
    for backend in catalog.backends:
        name = f"render-{backend.name}"
        functions.append(Function(name, "render", (("BACKEND", backend.name),)))
        subscriptions.append(PushSubscription(name, backend.topic, name,
                                              backend.topic + DEAD_LETTER_SUFFIX))
    work_topics = [s.topic for s in subscriptions]
    dead_letter_topics = [s.dead_letter_topic for s in subscriptions if s.dead_letter_topic]
    for topic in dead_letter_topics:
        subscriptions.append(PushSubscription(topic, topic, "dead-letter", None))
    topics = dict.fromkeys([*work_topics, *dead_letter_topics, settings.events_topic])
    return Topology(
        topics=tuple(topics),
        functions=tuple(functions),
        subscriptions=tuple(subscriptions),
    )
