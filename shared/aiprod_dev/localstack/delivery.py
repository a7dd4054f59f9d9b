"""Dev only: Pub/Sub push delivery for the local stack, as production delivers.

The Pub/Sub emulator's own push is kinder and stranger than production
(measured with pubsub-emulator 0.8.20, README.md "Local stack"):
- it keeps at most 2 pushes in flight per subscription, so a function never
  sees a burst, and a deployment's capacity is never exceeded (no 429);
- with a retry policy it stops redelivering a push that failed a few times;
  without one it redelivers about every second, with no backoff.

So each subscription of the local stack is an emulator pull subscription (with
the same dead-letter policy and ack deadline) and a relay in the supervisor
pushes its messages to the function, as production's push does: the same JSON
body, as many requests in flight as there are messages (up to MAX_OUTSTANDING),
a 2xx (or 102) acknowledges, anything else (a 429 from a full deployment, a 5xx,
a timeout at the ack deadline) is retried after an exponential backoff between
the subscription's minimum and maximum backoff (functions.yaml, scaled by
`time_scale`: production's minutes are the simulators' seconds), and the
emulator counts each failed delivery towards max_delivery_attempts and
dead-letters the message after the last, with production's attributes.

A development-only fault, `aiprod dev up --lose-messages FRACTION` (MessageLoss),
makes the relays of the render subscriptions acknowledge that fraction of the
messages they receive for the first time without pushing them: the message is
lost as if its publish had died with its process or its push subscription had
stopped delivering it, and only the watchdog can move its job again.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import logging
import math
import threading
from typing import Any

import httpx
from google.cloud.pubsub_v1 import SubscriberClient
from google.cloud.pubsub_v1.subscriber.message import Message
from google.cloud.pubsub_v1.subscriber.scheduler import ThreadScheduler
from google.cloud.pubsub_v1.types import FlowControl

from aiprod_dev.topology import Delivery

logger = logging.getLogger(__name__)
MAX_OUTSTANDING = 1000  # messages a subscription pushes at once
PUSH_SUCCESS = {102, 200, 201, 202, 204}  # what Pub/Sub push counts as an ack


def backoff_s(delivery: Delivery, attempt: int, time_scale: float) -> float:
    """Wait before redelivering after failed delivery number `attempt` (1-based)."""
    wait = min(delivery.maximum_backoff_s,
               delivery.minimum_backoff_s * 2 ** max(0, attempt - 1))
    return float(wait * time_scale)


class MessageLoss:
    """Dev-only fault: lose `fraction` of the messages a relay receives for the first
    time (a redelivery, after a failed push, is never lost: the fault stands for a
    message nobody ever saw, not for a render that died holding its attempt).

    Deterministic in count: of the first n messages, exactly floor(n x fraction) are
    lost (with 0.3: the 4th, 7th, 10th, ...), whatever the timing; which jobs they
    belong to depends on the order messages arrive in."""

    def __init__(self, fraction: float = 0.0) -> None:
        self._lock = threading.Lock()
        self.fraction = 0.0
        self._received = self._lost = 0
        self.set(fraction)

    def set(self, fraction: float) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"a fraction of messages to lose is 0..1, not {fraction}")
        with self._lock:
            self.fraction = fraction
            self._received = self._lost = 0

    def lose(self) -> bool:
        """Whether the next first delivery is lost."""
        with self._lock:
            if self.fraction <= 0.0:
                return False
            self._received += 1
            if math.floor(self._received * self.fraction + 1e-9) > self._lost:
                self._lost += 1
                return True
            return False


class PushRelay:
    """Pushes one pull subscription's messages to a function's endpoint."""

    def __init__(self, subscriber: SubscriberClient, subscription: str, endpoint: str,
                 ack_deadline_s: int, delivery: Delivery, time_scale: float,
                 loss: MessageLoss | None = None) -> None:
        self.subscription = subscription
        self.endpoint = endpoint
        self.ack_deadline_s = ack_deadline_s
        self.delivery = delivery
        self.time_scale = time_scale
        self._subscriber = subscriber
        self._http = httpx.Client(timeout=ack_deadline_s, limits=httpx.Limits(
            max_connections=MAX_OUTSTANDING, max_keepalive_connections=32))
        self._pool = concurrent.futures.ThreadPoolExecutor(MAX_OUTSTANDING,
                                                           thread_name_prefix="push")
        self._future: Any = None
        self._stopping = threading.Event()
        self.loss = loss  # None: this subscription never loses a message
        self._seen: set[str] = set()  # message ids received before (redeliveries)
        self._seen_lock = threading.Lock()

    def start(self) -> None:
        self._future = self._subscriber.subscribe(
            self.subscription, self._received,
            # Production's push request ends at the ack deadline; so does the lease.
            flow_control=FlowControl(max_messages=MAX_OUTSTANDING,
                                     max_lease_duration=self.ack_deadline_s),
            scheduler=ThreadScheduler(executor=concurrent.futures.ThreadPoolExecutor(4)))

    def stop(self) -> None:
        self._stopping.set()
        if self._future is not None:
            self._future.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    def _received(self, message: Message) -> None:
        if self._stopping.is_set():
            message.nack()
            return
        with self._seen_lock:
            again = message.message_id in self._seen
            self._seen.add(message.message_id)
        if again:
            self._log(logging.INFO, "redelivered", message,
                      delivery_attempt=message.delivery_attempt)
        elif self.loss is not None and self.loss.lose():
            message.ack()  # gone: never pushed, never redelivered
            self._log(logging.WARNING, "message_lost", message, fraction=self.loss.fraction)
            return
        self._pool.submit(self._push, message)

    def _log(self, level: int, event: str, message: Message, **fields: Any) -> None:
        """One JSON line in the supervisor's log (tests count the faults by them)."""
        try:
            body = json.loads(message.data)
        except ValueError:
            body = {}
        job_id = message.attributes.get("job_id") or (
            body.get("job_id") if isinstance(body, dict) else None)
        attempt = body.get("attempt") if isinstance(body, dict) else None
        logger.log(level, json.dumps({
            "event": event, "message_id": message.message_id,
            "subscription": self.subscription, "job_id": job_id, "attempt": attempt,
            **{k: v for k, v in message.attributes.items() if k != "job_id"}, **fields}))

    def _push(self, message: Message) -> None:
        publish_time = message.publish_time.isoformat().replace("+00:00", "Z")
        body = {
            "message": {"data": base64.b64encode(message.data).decode(),
                        "attributes": dict(message.attributes),
                        "messageId": message.message_id, "message_id": message.message_id,
                        "publishTime": publish_time, "publish_time": publish_time},
            "subscription": self.subscription,
            **({"deliveryAttempt": message.delivery_attempt}
               if message.delivery_attempt else {}),
        }
        try:
            status = self._http.post(self.endpoint, json=body).status_code
        except httpx.HTTPError:
            status = None  # refused, reset or past the ack deadline: a failed delivery
        if status in PUSH_SUCCESS:
            message.ack()
            return
        if self._stopping.is_set():
            return
        wait = backoff_s(self.delivery, message.delivery_attempt or 1, self.time_scale)
        timer = threading.Timer(wait, message.nack)
        timer.daemon = True
        timer.start()
