"""The chunk queue: receive micro-batches, delete after commit, heartbeat, postpone poison.

Pure planning (`plan_batch`) is separate from the boto3 calls so tests can drive it with
plain values.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from chunk_contract.message import ChunkMessage, InvalidChunkMessage


@dataclass(frozen=True)
class Received:
    """One SQS message as received."""

    message_id: str
    receipt_handle: str
    body: str
    receive_count: int = 1
    sent_at_ms: int | None = None


@dataclass(frozen=True)
class PoisonMessage:
    received: Received
    reason: str


@dataclass
class BatchPlan:
    """What to do with one receive: the chunks to work on, in apply order, and the rest."""

    chunks: dict[str, ChunkMessage] = field(default_factory=dict)  # key -> first message
    receipts: dict[str, list[Received]] = field(default_factory=dict)  # key -> its messages
    poison: list[PoisonMessage] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        """Chunk keys in ascending order: the order a micro-batch applies them (SPEC 4)."""
        return sorted(self.chunks)


def plan_batch(messages: Iterable[Received], bucket: str) -> BatchPlan:
    """Group messages by chunk key; a chunk delivered twice in one receive is worked once.

    A message for another bucket is poison: this worker's state covers one bucket's chunks.
    """
    plan = BatchPlan()
    for received in messages:
        try:
            message = ChunkMessage.from_json(received.body)
        except InvalidChunkMessage as exc:
            plan.poison.append(PoisonMessage(received, str(exc)))
            continue
        if message.bucket != bucket:
            plan.poison.append(PoisonMessage(
                received, f"message for bucket {message.bucket!r}, this worker serves {bucket!r}"))
            continue
        plan.chunks.setdefault(message.key, message)
        plan.receipts.setdefault(message.key, []).append(received)
    return plan


def _to_received(raw: dict) -> Received:
    attributes = raw.get("Attributes", {})
    sent = attributes.get("SentTimestamp")
    return Received(
        message_id=raw["MessageId"],
        receipt_handle=raw["ReceiptHandle"],
        body=raw.get("Body", ""),
        receive_count=int(attributes.get("ApproximateReceiveCount", "1")),
        sent_at_ms=int(sent) if sent else None,
    )


def receive_batch(
    sqs,
    queue_url: str,
    *,
    max_messages: int,
    wait_time_seconds: int,
    window_seconds: float,
    should_stop: Callable[[], bool] = lambda: False,
    clock: Callable[[], float] = time.monotonic,
) -> list[Received]:
    """Long-poll for the first messages, then top up without waiting until the batch is full,
    the queue is empty, or the window has passed.

    At the nominal rate one chunk arrives alone and is handed over at once; in a backlog every
    call returns 10 messages and a batch fills up in a few calls.
    """
    received: list[Received] = []
    deadline: float | None = None
    while len(received) < max_messages and not should_stop():
        wait = wait_time_seconds if not received else 0
        response = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=min(10, max_messages - len(received)),
            WaitTimeSeconds=wait,
            MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
        )
        batch = [_to_received(m) for m in response.get("Messages", [])]
        if not batch:
            if received or wait == 0:
                break
            continue  # long poll timed out empty: the caller decides what to do
        received.extend(batch)
        if deadline is None:
            deadline = clock() + window_seconds
        if clock() >= deadline:
            break
    return received


def delete_messages(sqs, queue_url: str, messages: Sequence[Received]) -> None:
    """Delete in batches of 10; a failed entry is raised, never ignored (it would be redone)."""
    for start in range(0, len(messages), 10):
        entries = [
            {"Id": str(i), "ReceiptHandle": m.receipt_handle}
            for i, m in enumerate(messages[start : start + 10])
        ]
        response = sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries)
        failed = response.get("Failed", [])
        if failed:
            raise QueueError(f"could not delete {len(failed)} message(s): {failed}")


def change_visibility(sqs, queue_url: str, messages: Sequence[Received], seconds: int) -> None:
    for start in range(0, len(messages), 10):
        entries = [
            {"Id": str(i), "ReceiptHandle": m.receipt_handle, "VisibilityTimeout": seconds}
            for i, m in enumerate(messages[start : start + 10])
        ]
        sqs.change_message_visibility_batch(QueueUrl=queue_url, Entries=entries)


class QueueError(RuntimeError):
    """An SQS call reported a failure for some entries."""


class Heartbeat:
    """Extends the visibility of a batch's messages while it takes longer than expected.

    Without it, a slow batch's messages would become visible again and a second worker would
    redo the chunk (harmless, as apply is idempotent, but wasted work).
    """

    def __init__(self, sqs, queue_url: str, messages: Sequence[Received], *,
                 after_seconds: float, extend_to_seconds: int,
                 on_beat: Callable[[], None], on_error: Callable[[Exception], None]):
        self._args = (sqs, queue_url, list(messages))
        self._after = after_seconds
        self._extend_to = extend_to_seconds
        self._on_beat = on_beat
        self._on_error = on_error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqs-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._after):
            try:
                change_visibility(*self._args, self._extend_to)
                self._on_beat()
            except Exception as exc:
                self._on_error(exc)

    def __enter__(self) -> Heartbeat:
        if self._args[2]:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
