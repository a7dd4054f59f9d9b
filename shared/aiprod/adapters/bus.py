"""Pub/Sub publishing. Every publish waits for the server's ack before returning,
so a handler never acknowledges its own message before its hand-off is durable."""

from __future__ import annotations

import json
from typing import Any, Protocol

from google.cloud.pubsub_v1 import PublisherClient

from aiprod.observability import tracing

PUBLISH_TIMEOUT_S = 30.0


class Bus(Protocol):
    def publish(self, topic: str, payload: dict[str, Any],
                attributes: dict[str, str] | None = None) -> str:
        """Publish JSON to a topic (a short name); return the message id."""
        ...


class PubSubBus:
    def __init__(self, project: str, publisher: PublisherClient | None = None) -> None:
        self._project = project
        self._publisher = publisher or PublisherClient()

    def topic_path(self, topic: str) -> str:
        return f"projects/{self._project}/topics/{topic}"

    def publish(self, topic: str, payload: dict[str, Any],
                attributes: dict[str, str] | None = None) -> str:
        data = json.dumps(payload, separators=(",", ":"), default=str).encode()
        attributes = tracing.outgoing() | (attributes or {})  # the trace follows the job
        future = self._publisher.publish(self.topic_path(topic), data, **attributes)
        message_id: str = future.result(timeout=PUBLISH_TIMEOUT_S)
        return message_id
