"""Settling each chunk: applied (quarantine its bad rows, ``apply_chunk``), rejected whole,
recorded as superseded or as another version of a settled key, failed (counted, retried after a
delay) or, past its budget, dead-lettered. Every effect is safe to redo after a crash
(``loop``'s docstring says in which order they happen).

``run_for_chunk`` is the boundary of one chunk: whatever fails in a chunk's own work is that
chunk's failure alone; an outage or a lost runtime goes up to the loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

from chunk_contract.message import ChunkMessage
from spark_detector.config import WorkerSettings
from spark_detector.engine import conflicts, failures
from spark_detector.engine import state as detection_state
from spark_detector.engine.failures import failure_text
from spark_detector.engine.ordering import DuplicateNumber, OutOfTurn, duplicate_reason
from spark_detector.engine.publish import quarantine_chunk, quarantine_rows
from spark_detector.failpoints import failpoint
from spark_detector.parsing import size_rejection
from spark_detector.spark.batch_result import BatchResult
from spark_detector.worker.chunk_queue import (
    PoisonMessage,
    delete_messages,
    send_to_dead_letter_queue,
)
from spark_detector.worker.database import Database
from spark_detector.worker.errors import (
    ChunkUnavailable,
    DatabaseUnavailable,
    DependencyOutage,
    SparkRuntimeLost,
)
from spark_detector.worker.hand import Hand, message_etag
from spark_detector.worker.summary import BatchSummary, parse_event_time, timed

logger = logging.getLogger(__name__)


# --- what the Spark job's result means for one chunk: pure decisions ------------------------

@dataclass(frozen=True)
class Apply:
    key: str


@dataclass(frozen=True)
class RejectWhole:
    key: str
    reason: str


@dataclass(frozen=True)
class Unavailable:
    key: str
    reason: str


@dataclass(frozen=True)
class Superseded:
    key: str
    reason: str


ChunkOutcome = Apply | RejectWhole | Unavailable | Superseded


def chunk_outcome(key: str, result: BatchResult) -> ChunkOutcome:
    """What the Spark job's result means for one chunk."""
    if key in result.superseded_chunks:
        return Superseded(key, result.superseded_chunks[key])
    if key in result.missing_chunks:
        return Unavailable(key, result.missing_chunks[key])
    if key in result.rejected_chunks:
        return RejectWhole(key, result.rejected_chunks[key])
    return Apply(key)


class Settler:
    def __init__(self, settings: WorkerSettings, s3, sqs, db: Database, hand: Hand, *,
                 y_start_time: datetime,
                 raise_if_runtime_lost: Callable[[BaseException], None],
                 own_failure: Callable[[BaseException, str], bool]) -> None:
        self.settings = settings
        self.s3 = s3
        self.sqs = sqs
        self.db = db
        self.hand = hand
        self.y_start_time = y_start_time
        self._raise_if_runtime_lost = raise_if_runtime_lost
        self._own_failure = own_failure  # or a DependencyOutage: ``outages.DependencyChecks``
        self.dlq_url = settings.dlq_url  # the queue's own, found at start-up when unset

    # --- before any Spark work: what is done already ---------------------------------------

    def drop_settled(self, summary: BatchSummary) -> dict[str, failures.ChunkFailure]:
        """Delete the messages of chunks done already (another version of such a key is
        recorded as a conflict), and stale ones of dead-lettered chunks; the failure records
        of the chunks still in hand."""
        hand = self.hand
        keys = list(hand.chunks)
        settled = self.db.run(lambda conn: detection_state.settled_etags(conn, keys))
        for key, etag in sorted(settled.items()):
            if not self.record_other_versions(key, etag, summary):
                summary.duplicates += 1
                logger.info("chunk already done: its messages are deleted",
                            extra={"chunk_key": key})
            hand.forget(key)
        failed = self.db.run(lambda conn: failures.failures_of(conn, list(hand.chunks)))
        for key, record in failed.items():
            if record.dead_lettered_at is None:
                continue
            if key in hand.redriven:
                logger.info("dead-lettered chunk redriven: a fresh failure budget",
                            extra={"chunk_key": key})
                self.db.run(partial(failures.forget_failures, key=key))
                hand.redriven.discard(key)
            else:
                logger.info("stale message of a dead-lettered chunk deleted",
                            extra={"chunk_key": key})
                hand.forget(key)
        return {k: r for k, r in failed.items() if r.dead_lettered_at is None}

    def reject_duplicate_numbers(self, summary: BatchSummary) -> None:
        """Reject whole, without reading them, the chunks in hand whose sequence number
        another chunk holds (two producers, a copy, a re-upload under another name)."""
        numbered = {key: seq for key in self.hand.chunks
                    if (seq := self.hand.seq(key)) is not None}
        if not numbered:
            return
        holders = self.db.run(lambda conn: detection_state.number_holders(conn, numbered))
        for key, holder in sorted(holders.items()):
            reason = duplicate_reason(numbered[key], holder)
            self.run_for_chunk(key, summary, partial(self.reject_whole, key, reason, summary,
                                                     duplicate_of=holder))

    def reject_oversized(self, ready: list[str], summary: BatchSummary) -> list[str]:
        """``ready`` less the chunks rejected whole from their message's size alone."""
        kept = []
        for key in ready:
            reason = size_rejection(self.hand.chunks[key].size, self.settings.max_chunk_bytes)
            if reason is None:
                kept.append(key)
            else:
                self.run_for_chunk(key, summary, partial(self.reject_whole, key, reason, summary))
        return kept

    def record_other_versions(self, key: str, settled_etag: str,
                              summary: BatchSummary) -> bool:
        """Record as conflicts the versions of settled ``key`` its messages in hand name,
        other than ``settled_etag`` (the key was uploaded again with other content); whether
        there were any. A version not known on either side ("") is none."""
        if not settled_etag:
            return False
        others = self.hand.versions(key) - {"", settled_etag}
        for etag in sorted(others):
            record = self.db.run(partial(conflicts.record_conflict, key=key, etag=etag,
                                         kind=conflicts.OVERWRITTEN, settled_etag=settled_etag))
            summary.conflicts += 1
            logger.warning("chunk key uploaded again with other content", extra={
                "chunk_key": key, "etag": etag, "settled_etag": settled_etag,
                "seen": record.seen,
                "hint": "a chunk key is applied once: upload the new content under a new key"})
        return bool(others)

    # --- one chunk ---------------------------------------------------------------------------

    def run_for_chunk(self, key: str, summary: BatchSummary,
                      effect: Callable[[], None]) -> bool:
        """Run one chunk's effects; a failure is that chunk's alone. True if it settled."""
        try:
            effect()
            return True
        except (DatabaseUnavailable, SparkRuntimeLost, DependencyOutage):
            raise
        except OutOfTurn as exc:
            logger.info("chunk waits for its predecessor", extra={
                "chunk_key": key, "seq": exc.seq, "next_seq": exc.next_seq})
            return False
        except DuplicateNumber as exc:  # its number was settled since it was picked
            reason, holder = str(exc), exc.holder
            return self.run_for_chunk(key, summary, lambda: self.reject_whole(
                key, reason, summary, duplicate_of=holder))
        except Exception as exc:  # the chunk's boundary: its failure, counted, not the loop's
            self._raise_if_runtime_lost(exc)
            if self._own_failure(exc, key):
                self.chunk_failed(key, exc, summary)
            return False

    def settle(self, outcome: ChunkOutcome, result: BatchResult, summary: BatchSummary) -> None:
        if isinstance(outcome, Superseded):
            self.superseded(outcome.key, outcome.reason, summary)
        elif isinstance(outcome, Unavailable):
            raise ChunkUnavailable(outcome.reason)
        elif isinstance(outcome, RejectWhole):
            self.reject_whole(outcome.key, outcome.reason, summary)
        else:
            self.apply(outcome.key, result, summary)

    def chunk_ref(self, key: str) -> detection_state.ChunkRef:
        message = self.hand.chunks[key]
        return detection_state.ChunkRef(key=key, etag=message.etag,
                                        event_time=parse_event_time(message.event_time),
                                        prefix=self.settings.chunk_prefix)

    def reject_whole(self, key: str, reason: str, summary: BatchSummary,
                     duplicate_of: str | None = None) -> None:
        s = self.settings
        chunk = self.chunk_ref(key)
        qkey = quarantine_chunk(self.s3, s.bucket, s.quarantine_prefix, key, reason)
        self.db.run(lambda conn: detection_state.record_rejected_chunk(
            conn, chunk, reason, qkey, duplicate_of=duplicate_of))
        if duplicate_of is not None:
            logger.warning("duplicate sequence number", extra={
                "chunk_key": key, "seq": chunk.seq, "holder": duplicate_of,
                "quarantine_key": qkey})
            summary.duplicate_numbers += 1
        else:
            logger.warning("chunk rejected whole", extra={
                "chunk_key": key, "reason": reason, "quarantine_key": qkey})
        self.record_other_versions(key, chunk.etag, summary)
        summary.rejected_chunks += 1
        self.hand.forget(key)

    def superseded(self, key: str, reason: str, summary: BatchSummary) -> None:
        """The version the chunk's message names was overwritten before it was read: no
        failure, and nothing to apply. The messages naming that version are deleted; the
        current version's own S3 event (or a look-up in S3, or the backfill) brings it. A
        message of another version already in hand takes over at once."""
        hand = self.hand
        stale = hand.chunks[key].etag
        self.db.run(lambda conn: conflicts.record_conflict(
            conn, key, stale, conflicts.SUPERSEDED))
        summary.conflicts += 1
        logger.warning("chunk overwritten after its event: that version is not read", extra={
            "chunk_key": key, "etag": stale, "reason": reason})
        held = hand.inflight.messages(key)
        hand.inflight.delete_some(key, [m for m in held if message_etag(m) == stale])
        newer = [m for m in held if message_etag(m) != stale]
        hand.aggregated.pop(key, None)
        if newer:
            hand.chunks[key] = ChunkMessage.from_json(newer[-1].body)
        else:
            hand.forget(key)

    def apply(self, key: str, result: BatchResult, summary: BatchSummary) -> None:
        s = self.settings
        chunk = self.chunk_ref(key)
        aggregates = result.aggregates[key]
        rejects = result.rejected_rows.get(key, ())
        if rejects:
            with timed(summary, "quarantine_ms"):
                qkey = quarantine_rows(self.s3, s.bucket, s.quarantine_prefix, key, rejects)
            logger.warning("rows rejected", extra={
                "chunk_key": key, "rows_rejected": len(rejects), "quarantine_key": qkey,
                "first_reason": f"row {rejects[0].row}: {rejects[0].reason}"})
        with timed(summary, "apply_ms"):
            detections = self.db.run(lambda conn: detection_state.try_apply_chunk(
                conn, chunk, aggregates, y_start_time=self.y_start_time,
                thresholds=s.thresholds, spark_ms=summary.spark_ms,
                detections_prefix=s.detections_prefix, prepared=result.prepared[key]))
        failpoint("after_commit")
        self.record_other_versions(key, chunk.etag, summary)
        self.hand.forget(key, delete_now=False)  # with the batch's others: delete_applied
        if detections is None:  # another worker applied it meanwhile: nothing done here
            summary.duplicates += 1
            return
        summary.chunks += 1
        summary.keys.append(key)
        summary.rows_good += aggregates.rows_good
        summary.rows_rejected += aggregates.rows_rejected
        summary.detections += len(detections)
        if chunk.event_time is not None:
            lag = round((datetime.now(UTC) - chunk.event_time).total_seconds() * 1000)
            summary.lag_ms = max(summary.lag_ms or 0, lag)
        for detection in detections:
            logger.info("pattern detected", extra={
                "chunk_key": key, "pattern_id": detection.pattern_id,
                "merchant_id": detection.merchant_id,
                "customer_name": detection.customer_name, "seq": detection.seq})

    # --- failures ----------------------------------------------------------------------------

    def chunk_failed(self, key: str, exc: BaseException, summary: BatchSummary) -> None:
        s = self.settings
        error = failure_text(exc)
        record = self.db.run(lambda conn: failures.record_failure(
            conn, key, self.hand.seq(key), error, s.retry_delay_seconds))
        summary.failures += 1
        logger.warning("chunk failed", extra={
            "chunk_key": key, "attempts": record.attempts, "max_attempts": s.max_chunk_failures,
            "error": error, "retry_after": record.retry_after.isoformat()
            if record.retry_after else None})
        if record.attempts >= s.max_chunk_failures:
            self.dead_letter(key, error, record.attempts, summary)

    def dead_letter(self, key: str, reason: str, attempts: int, summary: BatchSummary) -> None:
        """Move a chunk that keeps failing to the DLQ; the stream goes on without it.

        The DLQ message is sent before anything is marked: a crash in between leaves the
        chunk to fail once more and be sent again (two DLQ messages), never to be lost.
        """
        if self.dlq_url is None:
            logger.error("chunk keeps failing and no DLQ is configured: it will be retried",
                         extra={"chunk_key": key, "attempts": attempts})
            return
        messages = self.hand.inflight.messages(key)
        body = messages[0].body if messages else self.hand.chunks[key].to_json()
        send_to_dead_letter_queue(self.sqs, self.dlq_url, body, reason=reason,
                                  attempts=attempts)
        chunk = self.chunk_ref(key)
        self.db.run(lambda conn: failures.mark_dead_lettered(conn, key))
        self.db.run(lambda conn: detection_state.settle_dead_lettered(conn, chunk, reason))
        self.hand.forget(key)
        summary.dead_lettered += 1
        logger.error("chunk moved to the DLQ after repeated failures", extra={
            "chunk_key": key, "attempts": attempts, "reason": reason})

    def dead_letter_poison(self, poison: PoisonMessage, summary: BatchSummary) -> None:
        """A message that is no chunk message will never work: straight to the DLQ."""
        summary.poison += 1
        received = poison.received
        logger.error("poison message moved to the DLQ", extra={
            "message_id": received.message_id, "reason": poison.reason})
        if self.dlq_url is None:
            return  # left in flight: the queue's redrive policy takes it after its visibility
        send_to_dead_letter_queue(self.sqs, self.dlq_url, received.body, reason=poison.reason,
                                  attempts=1)
        delete_messages(self.sqs, self.settings.queue_url, [received])
