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
                 Function("dead-letter", "dead_letter")]
    subscriptions = [PushSubscription("intake", settings.intake_topic, "intake",
                                      settings.intake_topic + DEAD_LETTER_SUFFIX)]
    for backend in catalog.backends:
        name = f"render-{backend.name}"
        functions.append(Function(name, "render", (("BACKEND", backend.name),)))
        subscriptions.append(PushSubscription(name, backend.topic, name,
                                              backend.topic + DEAD_LETTER_SUFFIX))
    work_topics = [s.topic for s in subscriptions]
    dead_letter_topics = [s.dead_letter_topic for s in subscriptions if s.dead_letter_topic]
    for topic in dead_letter_topics:
        subscriptions.append(PushSubscription(topic, topic, "dead-letter", None))
    return Topology(
        topics=(*work_topics, *dead_letter_topics, settings.events_topic),
        functions=tuple(functions),
        subscriptions=tuple(subscriptions),
    )
