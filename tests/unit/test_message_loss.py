"""The local stack's dev-only fault: render messages lost on purpose (delivery.py,
MessageLoss), so the watchdog has something to do on a stack whose relay
otherwise redelivers every message like production."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from aiprod_dev.localstack import delivery
from aiprod_dev.localstack.delivery import MessageLoss, PushRelay
from aiprod_dev.localstack.stack import FAULTS_FILE, Stack, StackOptions
from aiprod_dev.topology import Delivery


class FakeMessage:
    """What the relay reads of a pulled message, and what it does with it."""

    def __init__(self, message_id: str, job_id: str, **attributes: str) -> None:
        self.message_id = message_id
        self.data = json.dumps({"job_id": job_id, "backend": "b", "attempt": 0}).encode()
        self.attributes = {"job_id": job_id, **attributes}
        self.delivery_attempt: int | None = None
        self.acked = self.nacked = False

    def ack(self) -> None:
        self.acked = True

    def nack(self) -> None:
        self.nacked = True


class FakePool:
    """Stands for the relay's push threads: records what would be pushed."""

    def __init__(self) -> None:
        self.pushed: list[Any] = []

    def submit(self, _push: Any, message: Any) -> None:
        self.pushed.append(message)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def relay(loss: MessageLoss | None) -> tuple[PushRelay, list[Any]]:
    relay = PushRelay(object(), "projects/p/subscriptions/render-x",
                      "http://127.0.0.1:9/", 120, Delivery(1, 10, 5), 1.0, loss)
    relay._pool.shutdown()
    pool = FakePool()
    relay._pool = pool  # type: ignore[assignment]
    return relay, pool.pushed


def test_exactly_that_fraction_of_messages_is_lost_whatever_the_order() -> None:
    loss = MessageLoss(0.3)
    lost = [n for n in range(1, 101) if loss.lose()]
    assert lost[:4] == [4, 7, 10, 14]
    assert len(lost) == 30
    assert not any(MessageLoss(0.0).lose() for _ in range(100))
    assert all(MessageLoss(1.0).lose() for _ in range(100))
    with pytest.raises(ValueError, match=r"is 0\.\.1, not 1\.5"):
        MessageLoss(1.5)


def test_a_lost_message_is_acknowledged_unpushed_and_logged_and_a_redelivery_never_lost(
        caplog: pytest.LogCaptureFixture) -> None:
    subject, pushed = relay(MessageLoss(1.0))
    first = FakeMessage("1", "job_a", continuation="true")
    with caplog.at_level(logging.INFO, logger=delivery.__name__):
        subject._received(first)
        again = FakeMessage("1", "job_a")  # the same message, delivered again
        subject._received(again)
    assert first.acked
    assert not first.nacked
    assert pushed == [again]
    records = [json.loads(r.getMessage()) for r in caplog.records]
    assert records[0] == {"event": "message_lost", "message_id": "1",
                          "subscription": "projects/p/subscriptions/render-x",
                          "job_id": "job_a", "attempt": 0, "continuation": "true",
                          "fraction": 1.0}
    assert records[1]["event"] == "redelivered"
    subject.stop()


def test_a_relay_without_the_fault_pushes_every_message() -> None:
    subject, pushed = relay(None)
    messages = [FakeMessage(str(n), "job_a") for n in range(10)]
    for message in messages:
        subject._received(message)
    assert pushed == messages
    assert not any(m.acked for m in messages)
    subject.stop()


def test_the_running_stack_applies_the_fraction_written_by_dev_lose_messages(
        tmp_path: Path) -> None:
    stack = Stack(StackOptions(tmp_path, port_base=0, lose_messages=0.5))
    stack.losses = [MessageLoss(0.5), MessageLoss(0.5)]  # what _create_topology makes
    (tmp_path / FAULTS_FILE).write_text(json.dumps({"lose_messages": 0.25}))
    stack._apply_faults()
    assert [loss.fraction for loss in stack.losses] == [0.25, 0.25]
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["lose_messages"] == 0.25
