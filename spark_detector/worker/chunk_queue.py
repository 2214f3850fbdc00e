"""The chunk queue: receive micro-batches, hold messages under one heartbeat, delete after commit.

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
    # set on a message the worker itself moved to the DLQ: seen again, it was redriven
    dead_letter_reason: str | None = None
    received_at: float = field(default_factory=time.monotonic, compare=False)


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
        """Chunk keys in ascending order (production order for numbered chunks)."""
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
    reason = raw.get("MessageAttributes", {}).get(DEAD_LETTER_REASON, {}).get("StringValue")
    return Received(
        message_id=raw["MessageId"],
        receipt_handle=raw["ReceiptHandle"],
        body=raw.get("Body", ""),
        receive_count=int(attributes.get("ApproximateReceiveCount", "1")),
        sent_at_ms=int(sent) if sent else None,
        dead_letter_reason=reason,
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
            MessageAttributeNames=[DEAD_LETTER_REASON],
        )
        batch = [_to_received(m) for m in response.get("Messages", [])]
        if not batch:
            break  # the queue is empty (or the long poll timed out): the caller decides
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


# Message attributes of a chunk message the worker moved to the DLQ itself.
DEAD_LETTER_REASON = "dead_letter_reason"
DEAD_LETTER_ATTEMPTS = "dead_letter_attempts"


def send_to_dead_letter_queue(sqs, dlq_url: str, body: str, *, reason: str,
                              attempts: int) -> None:
    """Put a chunk message on the DLQ with why it is there (SQS keeps message attributes
    when an operator redrives it, which is how the worker knows a redriven message)."""
    sqs.send_message(QueueUrl=dlq_url, MessageBody=body, MessageAttributes={
        DEAD_LETTER_REASON: {"DataType": "String", "StringValue": reason[:1000] or "failed"},
        DEAD_LETTER_ATTEMPTS: {"DataType": "Number", "StringValue": str(attempts)},
    })


# SQS keeps a received message's visibility at most 12 hours after its receipt: past that
# a heartbeat can no longer extend it, so held messages are let go a little before.
MAX_HOLD_SECONDS = 11 * 3600


class InFlight:
    """The messages this worker holds, and one heartbeat that keeps them all hidden.

    The queue's visibility timeout is short (about a minute) so that a killed worker's
    messages come back soon; while the worker lives, this heartbeat extends every held
    message - the batch at work and the chunks waiting for their predecessor - well before
    it would reappear.
    """

    def __init__(self, sqs, queue_url: str, *, every_seconds: float, extend_to_seconds: int,
                 on_error: Callable[[Exception], None] = lambda exc: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._sqs, self._queue_url = sqs, queue_url
        self._every, self._extend_to = every_seconds, extend_to_seconds
        self._on_error, self._clock = on_error, clock
        self._lock = threading.Lock()
        self._held: dict[str, list[Received]] = {}  # chunk key -> its messages
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqs-heartbeat", daemon=True)

    def __enter__(self) -> InFlight:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def add(self, key: str, messages: Sequence[Received]) -> None:
        with self._lock:
            self._held.setdefault(key, []).extend(messages)

    def messages(self, key: str) -> list[Received]:
        with self._lock:
            return list(self._held.get(key, ()))

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._held)

    def pop(self, key: str) -> list[Received]:
        with self._lock:
            return self._held.pop(key, [])

    def delete(self, key: str) -> None:
        """The chunk is done: delete its messages (raises if SQS refuses; they stay held)."""
        self.delete_many([key])

    def delete_many(self, keys: Sequence[str]) -> None:
        """Delete the messages of several done chunks, ten per call (raises if SQS refuses:
        they all stay held)."""
        messages = [m for key in keys for m in self.messages(key)]
        delete_messages(self._sqs, self._queue_url, messages)
        for key in keys:
            self.pop(key)

    def delete_some(self, key: str, messages: Sequence[Received]) -> None:
        """Delete some of a chunk's messages (those of a version not to be read); the others
        stay held."""
        delete_messages(self._sqs, self._queue_url, messages)
        with self._lock:
            left = [m for m in self._held.get(key, ()) if m not in messages]
            if left:
                self._held[key] = left
            else:
                self._held.pop(key, None)

    def release(self, key: str, delay_seconds: int = 0) -> None:
        messages = self.pop(key)
        if messages:
            change_visibility(self._sqs, self._queue_url, messages, delay_seconds)

    def release_all(self) -> int:
        """Give every held message back to the queue at once (outage, Spark lost, stop)."""
        with self._lock:
            held, self._held = self._held, {}
        messages = [m for ms in held.values() for m in ms]
        change_visibility(self._sqs, self._queue_url, messages, 0)
        return len(messages)

    def beat(self) -> None:
        """Extend every held message; let go of those near SQS's 12-hour limit."""
        now = self._clock()
        with self._lock:
            held = {key: list(ms) for key, ms in self._held.items()}
        expiring = [m for ms in held.values() for m in ms
                    if now - m.received_at >= MAX_HOLD_SECONDS]
        if expiring:
            change_visibility(self._sqs, self._queue_url, expiring, 0)
            with self._lock:
                for key in list(self._held):
                    self._held[key] = [m for m in self._held[key] if m not in expiring]
        fresh = [m for ms in held.values() for m in ms if m not in expiring]
        change_visibility(self._sqs, self._queue_url, fresh, self._extend_to)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self.beat()
            except Exception as exc:  # a background thread: report, beat again next time
                self._on_error(exc)
