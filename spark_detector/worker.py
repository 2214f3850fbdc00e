"""The long-running loop of Mechanism Y: SQS in, one Spark job per micro-batch, exactly-once out.

Order of effects for one chunk, and why it is safe to crash between any two of them:
1. rejected rows are written to quarantine/ (a deterministic key: a redo rewrites it);
2. `apply_chunk` commits state, the processed_chunks row and the detections in ONE
   transaction (a redo finds the chunk applied and changes nothing);
3. the chunk's SQS messages are deleted (a crash before this only causes a redelivery,
   recognised in step 0 as a duplicate);
4. closed outbox files are written to S3 and marked written (a redo rewrites the same bytes).
Step 0, before any Spark work: messages for chunks already applied or rejected are deleted.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg2

from spark_detector import engine, outbox
from spark_detector.backfill import backfill
from spark_detector.config import WorkerSettings
from spark_detector.failpoints import failpoint
from spark_detector.publish import publish_pending, quarantine_chunk, quarantine_rows
from spark_detector.queue import (
    BatchPlan,
    Heartbeat,
    Received,
    change_visibility,
    delete_messages,
    plan_batch,
    receive_batch,
)
from spark_detector.retry import retry
from spark_detector.spark_job import BatchResult

logger = logging.getLogger(__name__)

TRANSIENT_DB_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)


@dataclass
class BatchSummary:
    """One line per micro-batch in the log: what a dashboard needs."""

    chunks: int = 0
    duplicates: int = 0
    rejected_chunks: int = 0
    poison: int = 0
    rows_good: int = 0
    rows_rejected: int = 0
    detections: int = 0
    files_written: int = 0
    # Where the batch's time went, in stage order (ms); fetch_ms is part of spark_ms.
    received_at: str | None = None  # UTC, when the batch's messages were in hand
    dedup_ms: int = 0  # looking up chunks already done
    spark_ms: int = 0
    fetch_ms: int | None = None  # S3 GET + chunk checks on the executors, summed over tasks
    quarantine_ms: int = 0
    apply_ms: int = 0
    delete_ms: int = 0  # SQS deletes after each commit
    publish_ms: int = 0  # closed outbox files written to S3
    batch_ms: int = 0  # received_at -> batch done
    lag_ms: int | None = None  # oldest S3 event in the batch -> last commit
    keys: list[str] = field(default_factory=list)


def _ms_since(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)


@contextlib.contextmanager
def _timed(summary: BatchSummary, stage: str) -> Iterator[None]:
    """Add the block's wall time to ``summary.<stage>`` (ms), even when the stage repeats."""
    started = time.perf_counter()
    try:
        yield
    finally:
        setattr(summary, stage, getattr(summary, stage) + _ms_since(started))


def parse_event_time(value: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class Worker:
    """Holds the process-wide clients; `run_batch` is one receive -> commit -> publish cycle."""

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        s3,
        sqs,
        connect: Callable[[], object],
        aggregate: Callable[[list[str]], BatchResult],
        y_start_time: datetime | None = None,
        clock: Callable[[], float] = time.monotonic,
        stop_event: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.s3 = s3
        self.sqs = sqs
        self._connect = connect
        self._aggregate = aggregate
        self._conn = None
        self.y_start_time = y_start_time or datetime.now(UTC)
        self._clock = clock
        self._last_activity = clock()
        self._last_backfill: float | None = None
        self.stop_event = stop_event or threading.Event()
        self._batch: list[Received] = []  # the messages of the batch in progress

    # --- PostgreSQL with reconnects -------------------------------------------------------

    def _connection(self):
        if self._conn is None or getattr(self._conn, "closed", 0):
            self._conn = self._connect()
        return self._conn

    def _reset_connection(self, attempt: int, exc: BaseException, delay: float) -> None:
        logger.warning("database unavailable, reconnecting", extra={
            "attempt": attempt, "error": str(exc).strip(), "retry_in_s": round(delay, 2)})
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):  # already broken: just drop it
                self._conn.close()
        self._conn = None

    def db(self, fn: Callable[[object], object]):
        """Run `fn(conn)`, reconnecting with bounded backoff while PostgreSQL is unavailable."""
        return retry(lambda: fn(self._connection()), retry_on=TRANSIENT_DB_ERRORS,
                     attempts=8, base=0.25, cap=8.0, on_retry=self._reset_connection)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- the loop ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start-up work: schema, and detections committed but never written (the outbox)."""
        from spark_detector.db import migrate

        version = self.db(migrate)
        written = self.publish()
        logger.info("worker started", extra={
            "schema_version": version, "y_start_time": self.y_start_time.isoformat(),
            "outbox_files_written": len(written)})

    def run(self, *, drain: bool = False) -> None:
        self.start()
        while not self.stop_event.is_set():
            try:
                summary = self.run_batch()
                self.idle_work(summary)
            except Exception:  # the outermost loop: log with context, go on
                keys = sorted({m.message_id for m in self._batch})
                logger.exception("batch failed; its messages will be retried",
                                 extra={"message_ids": keys})
                self._release_batch()
                self.stop_event.wait(1.0)
        if drain:
            self.flush_partial("drain")
        logger.info("worker stopped", extra={"drain": drain})

    def idle_work(self, summary: BatchSummary | None) -> None:
        now = self._clock()
        if summary is not None and summary.chunks:
            self._last_activity = now
        s = self.settings
        if (s.flush_partial_after_seconds is not None
                and now - self._last_activity >= s.flush_partial_after_seconds):
            self.flush_partial("idle")
            self._last_activity = now
        due = self._last_backfill is None or (
            s.backfill_every_seconds is not None
            and now - self._last_backfill >= s.backfill_every_seconds)
        if s.backfill_every_seconds is not None and due:
            self._last_backfill = now
            self.db(lambda conn: backfill(conn, self.s3, self.sqs, s))

    def flush_partial(self, why: str) -> None:
        file_no = self.db(outbox.close_partial_file)
        written = self.publish()
        if file_no is not None:
            logger.info("partial detection file flushed", extra={
                "reason": why, "file_no": file_no, "files_written": written})

    def publish(self) -> list[str]:
        s = self.settings
        return self.db(lambda conn: publish_pending(conn, self.s3, s.bucket, s.detections_prefix))

    def receive(self) -> list[Received]:
        s = self.settings
        return receive_batch(
            self.sqs, s.queue_url, max_messages=s.max_batch_chunks,
            wait_time_seconds=s.wait_time_seconds, window_seconds=s.batch_window_seconds,
            should_stop=self.stop_event.is_set)

    def _release_batch(self) -> None:
        """Make a failed batch's messages visible again after a short, growing delay.

        Without this they would stay hidden for the queue's whole visibility timeout (15 min
        in the template). Messages already deleted are reported as failed entries by SQS and
        ignored; a message failing again and again reaches the DLQ by the redrive policy.
        """
        batch, self._batch = self._batch, []
        try:
            self._postpone(batch)
        except Exception as exc:  # they reappear after the visibility timeout anyway
            logger.warning("could not release the failed batch's messages",
                           extra={"error": str(exc)})

    def run_batch(self) -> BatchSummary | None:
        self._batch = received = self.receive()
        if not received:
            return None
        batch_started = time.perf_counter()
        plan = plan_batch(received, self.settings.bucket)
        summary = BatchSummary(received_at=datetime.now(UTC).isoformat(timespec="milliseconds"))
        self._handle_poison(plan, summary)
        with _timed(summary, "dedup_ms"):
            todo = self._drop_done(plan, summary)
        if todo:
            with Heartbeat(self.sqs, self.settings.queue_url,
                           [m for key in todo for m in plan.receipts[key]],
                           after_seconds=self.settings.heartbeat_after_seconds,
                           extend_to_seconds=self.settings.visibility_timeout_seconds,
                           on_beat=lambda: logger.info("batch still running: visibility extended",
                                                       extra={"keys": todo}),
                           on_error=lambda exc: logger.warning(
                               "heartbeat failed", extra={"error": str(exc)})):
                self._work(plan, todo, summary)
        with _timed(summary, "publish_ms"):
            summary.files_written = len(self.publish())
        summary.batch_ms = _ms_since(batch_started)
        logger.info("batch done", extra=summary.__dict__)
        return summary

    def _handle_poison(self, plan: BatchPlan, summary: BatchSummary) -> None:
        """Leave poison for the DLQ: not deleted, retried after a growing delay."""
        for poison in plan.poison:
            summary.poison += 1
            logger.error("poison message left for retry / DLQ", extra={
                "message_id": poison.received.message_id, "reason": poison.reason,
                "receive_count": poison.received.receive_count})
            self._postpone([poison.received])

    def _postpone(self, messages: list[Received]) -> None:
        for message in messages:
            delay = min(43_200, self.settings.retry_delay_seconds
                        * 2 ** max(0, message.receive_count - 1))
            change_visibility(self.sqs, self.settings.queue_url, [message], delay)

    def _drop_done(self, plan: BatchPlan, summary: BatchSummary) -> list[str]:
        done = self.db(lambda conn: engine.done_chunk_keys(conn, plan.keys))
        for key in sorted(done):
            summary.duplicates += 1
            logger.info("duplicate delivery: chunk already done, message deleted",
                        extra={"chunk_key": key})
            delete_messages(self.sqs, self.settings.queue_url, plan.receipts[key])
        return [key for key in plan.keys if key not in done]

    def _work(self, plan: BatchPlan, todo: list[str], summary: BatchSummary) -> None:
        s = self.settings
        with _timed(summary, "spark_ms"):
            failpoint("before_spark")
            result = self._aggregate(todo)
            failpoint("after_spark")
        summary.fetch_ms = None if result.fetch_ms is None else round(result.fetch_ms)
        for key in todo:
            message = plan.chunks[key]
            if key in result.missing_chunks:
                summary.poison += 1
                logger.error("chunk object not found; message left for retry / DLQ",
                             extra={"chunk_key": key})
                self._postpone(plan.receipts[key])
                continue
            chunk = engine.ChunkRef(key=key, etag=message.etag,
                                    event_time=parse_event_time(message.event_time))
            if key in result.rejected_chunks:
                reason = result.rejected_chunks[key]
                qkey = quarantine_chunk(self.s3, s.bucket, s.quarantine_prefix, key, reason)
                self.db(lambda conn, c=chunk, r=reason, q=qkey:
                        engine.record_rejected_chunk(conn, c, r, q))
                logger.warning("chunk rejected whole", extra={
                    "chunk_key": key, "reason": reason, "quarantine_key": qkey})
                summary.rejected_chunks += 1
                delete_messages(self.sqs, s.queue_url, plan.receipts[key])
                continue
            self._apply(chunk, result, summary)
            failpoint("after_commit")
            with _timed(summary, "delete_ms"):
                delete_messages(self.sqs, s.queue_url, plan.receipts[key])
            summary.chunks += 1
            summary.keys.append(key)
            if chunk.event_time is not None:
                lag = round((datetime.now(UTC) - chunk.event_time).total_seconds() * 1000)
                summary.lag_ms = max(summary.lag_ms or 0, lag)

    def _apply(self, chunk: engine.ChunkRef, result: BatchResult, summary: BatchSummary) -> None:
        s = self.settings
        key = chunk.key
        aggregates = result.aggregates[key]
        rejects = result.rejected_rows.get(key, [])
        if rejects:
            with _timed(summary, "quarantine_ms"):
                qkey = quarantine_rows(self.s3, s.bucket, s.quarantine_prefix, key, rejects)
            logger.warning("rows rejected", extra={
                "chunk_key": key, "rows_rejected": len(rejects), "quarantine_key": qkey,
                "first_reason": f"row {rejects[0].row}: {rejects[0].reason}"})
        with _timed(summary, "apply_ms"):
            detections = self.db(lambda conn: engine.apply_chunk(
                conn, chunk, aggregates, y_start_time=self.y_start_time,
                thresholds=s.thresholds, spark_ms=summary.spark_ms))
        summary.rows_good += aggregates.rows_good
        summary.rows_rejected += aggregates.rows_rejected
        summary.detections += len(detections)
        for detection in detections:
            logger.info("pattern detected", extra={
                "chunk_key": key, "pattern_id": detection.pattern_id,
                "merchant_id": detection.merchant_id,
                "customer_name": detection.customer_name, "seq": detection.seq})

