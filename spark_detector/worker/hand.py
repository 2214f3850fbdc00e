"""The chunks the worker holds: their messages (in flight under one heartbeat), the Spark
results of those aggregated ahead of their turn, and what is known of each (redriven from the
DLQ, failed before, applied but its messages not deleted yet)."""

from __future__ import annotations

import logging

from botocore.exceptions import BotoCoreError, ClientError

from chunk_contract.layout import chunk_seq
from chunk_contract.message import ChunkMessage, InvalidChunkMessage
from spark_detector.config import WorkerSettings
from spark_detector.parsing import size_rejection
from spark_detector.spark.batch_result import BatchResult
from spark_detector.worker.chunk_queue import (
    InFlight,
    PoisonMessage,
    QueueError,
    Received,
    plan_batch,
)
from spark_detector.worker.summary import BatchSummary, timed

logger = logging.getLogger(__name__)

# What an SQS call raises when SQS (or the way to it) fails, or refuses some entries.
SQS_ERRORS = (BotoCoreError, ClientError, QueueError)


def message_etag(received: Received) -> str:
    try:
        return ChunkMessage.from_json(received.body).etag
    except InvalidChunkMessage:
        return ""


class Hand:
    """The chunks in hand, in arrival order: with messages (held in flight) or found in S3."""

    def __init__(self, settings: WorkerSettings, inflight: InFlight) -> None:
        self.settings = settings
        self.inflight = inflight
        self.chunks: dict[str, ChunkMessage] = {}
        # Spark results of chunks in hand, aggregated ahead of their turn (one batch's result
        # is shared by its chunks); dropped with the chunk.
        self.aggregated: dict[str, BatchResult] = {}
        # those of them aggregated by an overlapped job, not yet counted in a batch summary
        self.ahead: set[str] = set()
        self.redriven: set[str] = set()
        self.applied_unacked: list[str] = []  # applied; their messages not deleted yet
        self.failed_before: set[str] = set()  # chunks in hand with a failure record
        # chunks that failed after a probe found their dependency answering: the next
        # failure is theirs (``outages.DependencyChecks.own_failure``)
        self.confirming: set[str] = set()

    def seq(self, key: str) -> int | None:
        """The producer's sequence number of ``key``; None for a hand upload."""
        return chunk_seq(key, self.settings.chunk_prefix)

    def room(self) -> int:
        """How many more messages may be received (``WORKER_MAX_HELD_CHUNKS``)."""
        s = self.settings
        return min(s.max_batch_chunks, s.max_held_chunks - len(self.chunks))

    def take(self, received: list[Received]) -> list[PoisonMessage]:
        """Hold the received chunk messages; the poison among them, for the DLQ."""
        plan = plan_batch(received, self.settings.bucket)
        for key, message in plan.chunks.items():
            messages = plan.receipts[key]
            self.inflight.add(key, messages)
            self.chunks.setdefault(key, message)
            if any(m.dead_letter_reason for m in messages):
                self.redriven.add(key)
        return list(plan.poison)

    def versions(self, key: str) -> set[str]:
        """The versions (ETags) of ``key`` its messages in hand name; "" for none."""
        return {message_etag(m) for m in self.inflight.messages(key)} | {self.chunks[key].etag}

    def forget(self, key: str, delete_now: bool = True) -> None:
        """Let go of ``key``: its messages deleted now, or with the batch's other applied
        chunks (``delete_applied``)."""
        if delete_now:
            self.inflight.delete(key)
        else:
            self.applied_unacked.append(key)
        self.chunks.pop(key, None)
        self.aggregated.pop(key, None)
        self.ahead.discard(key)
        self.redriven.discard(key)
        self.confirming.discard(key)

    def delete_applied(self, summary: BatchSummary) -> None:
        """Delete the messages of the chunks applied since the last call, ten per SQS call.
        If SQS refuses, they stay held and are tried again next loop (a crash meanwhile
        only brings them back as duplicates)."""
        keys, self.applied_unacked = self.applied_unacked, []
        if not keys:
            return
        try:
            with timed(summary, "delete_ms"):
                self.inflight.delete_many(keys)
        except SQS_ERRORS as exc:
            self.applied_unacked = keys + self.applied_unacked
            logger.warning("messages of applied chunks not deleted; tried again next loop",
                           extra={"chunk_keys": keys, "error": str(exc)})

    def give_back_all(self, why: str) -> None:
        """Make every held message visible at once: not a failure, not a postponement. The
        applied chunks' messages are deleted, not given back."""
        self.delete_applied(BatchSummary())
        self.chunks.clear()
        self.aggregated.clear()
        self.ahead.clear()
        self.redriven.clear()
        try:
            released = self.inflight.release_all()
        except SQS_ERRORS as exc:  # they reappear after the visibility timeout anyway
            logger.warning("could not give the messages back", extra={"error": str(exc)})
            return
        if released:
            logger.info("messages given back to the queue", extra={
                "reason": why, "messages": released})

    def candidates(self, applying: list[str]) -> list[str]:
        """Chunks in hand, not yet aggregated, not suspect, not too large: production order."""
        skip = set(applying) | set(self.aggregated) | self.redriven | self.failed_before
        keys = [
            key for key, message in self.chunks.items()
            if key not in skip
            and size_rejection(message.size, self.settings.max_chunk_bytes) is None]
        return sorted(keys, key=lambda k: (self.seq(k) is None, self.seq(k) or 0, k))
