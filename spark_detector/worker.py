"""The long-running loop of Mechanism Y: SQS in, Spark micro-batches, exactly-once out.

Each loop: receive messages (they join the chunks the worker holds, up to
``WORKER_MAX_HELD_CHUNKS``), drop chunks already done (recording another version of such a
key as a conflict), reject whole the chunks whose sequence number another chunk holds, pick
the chunks that may be applied now (``ordering.ready_run``: production order,
a predecessor looked up in S3 when its event is late or lost), aggregate them in ONE Spark
job, then settle each chunk in order. Effects for one chunk, and why a crash between any two
of them is safe:

1. rejected rows are written to quarantine/ (a deterministic key: a redo rewrites it);
2. ``apply_chunk`` commits state, the processed_chunks row, the detections and the chunk's
   sequence mark in ONE transaction (a redo finds the chunk applied and changes nothing);
3. the chunk's SQS messages are deleted, with those of the batch's other applied chunks
   once the batch is settled, ten per call (a crash before this only causes a redelivery,
   recognised as a duplicate);
4. closed outbox files are written to S3 and marked written (a redo rewrites the same bytes).

While a micro-batch is applied (steps 1-4, main thread), the Spark job of the next one
already runs on a second thread ("overlap"): the chunks in hand beyond this batch are
aggregated ahead of their turn. That changes no guarantee: a Spark job only reads S3 and
returns aggregates, every effect above still happens on the main thread in production order,
and aggregates held in memory are lost in a crash like the messages and simply redone. A
failed overlapped job is dropped uncounted; its chunks are aggregated again in their turn,
where a failure is isolated and counted as below.

Failures stay with the chunk that caused them: a failed micro-batch is retried chunk by
chunk at once, and only a chunk that fails on its own is counted (``failures``); after its
budget it is moved to the DLQ by the worker, and the stream goes on without it. An outage of
PostgreSQL is no chunk's failure: the worker gives its messages back and receives nothing
until the database answers. Nor is an outage of S3 or of the Spark runtime (``outages``):
the worker keeps the chunks it holds, receives nothing, and retries them once a probe finds
the dependency answering. A dead Spark runtime ends the process (exit code 3) after its
messages are given back, so the container platform restarts it: a JVM that exited (an
OutOfMemoryError ends it: ``-XX:+ExitOnOutOfMemoryError``), or a Spark job that ran longer
than ``WORKER_SPARK_JOB_TIMEOUT_SECONDS`` (a JVM thrashing in its garbage collector, a stuck
task), which a watchdog thread notices even while the loop waits for that job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg2

from chunk_contract.layout import chunk_seq, start_after_seq
from chunk_contract.listing import list_chunks
from chunk_contract.message import ChunkMessage, InvalidChunkMessage
from spark_detector import conflicts, db, detection_state, emf, failures, outages, outbox
from spark_detector.backfill import backfill
from spark_detector.batch_result import merged_results
from spark_detector.chunk_queue import (
    InFlight,
    Received,
    delete_messages,
    plan_batch,
    receive_batch,
    send_to_dead_letter_queue,
)
from spark_detector.config import WorkerSettings
from spark_detector.failpoints import failpoint
from spark_detector.ordering import DuplicateNumber, OutOfTurn, consecutive_from, duplicate_reason
from spark_detector.ordering import ready_run as plan_ready_run
from spark_detector.publish import publish_pending, quarantine_chunk, quarantine_rows
from spark_detector.retry import backoff_delays, retry
from spark_detector.spark_job import BatchResult, bounded_groups

logger = logging.getLogger(__name__)

# The psycopg2 errors that may be an outage; db.is_outage / db.is_transient tell which are.
TRANSIENT_DB_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)
# Exit codes of `run` besides 0 and 2 (a setting): docs/worker.md
EXIT_SPARK_LOST = 3  # the JVM died or a job overran: the messages were given back
EXIT_REBUILD_IN_PROGRESS = db.EXIT_REBUILD_IN_PROGRESS  # `replay --replace` has not finished
# A JVM whose gateway connection broke is usually exiting: how long to wait for it to be gone
# before a job's error is taken for the chunk's own.
JVM_EXIT_GRACE_SECONDS = 5.0
WAIT_WHILE_HOLDING_SECONDS = 1  # long poll while chunks wait: others may settle the gap


class DatabaseUnavailable(RuntimeError):
    """PostgreSQL did not answer within the retry budget: an outage, not a chunk's fault."""


class SparkRuntimeLost(RuntimeError):
    """The Spark JVM is gone; this process cannot aggregate anything any more."""


class ChunkUnavailable(RuntimeError):
    """The chunk's object could not be read (missing, or access denied)."""


@dataclass
class BatchSummary:
    """One line per loop in the log: what a dashboard needs."""

    chunks: int = 0
    duplicates: int = 0  # messages of chunks already done
    rejected_chunks: int = 0
    duplicate_numbers: int = 0  # of rejected_chunks: a number another chunk holds
    conflicts: int = 0  # versions of a chunk key not applied: overwritten, superseded
    poison: int = 0
    failures: int = 0
    dead_lettered: int = 0
    waiting: int = 0  # chunks held for a predecessor
    pulled: int = 0  # chunks found in S3 without their message in hand
    overlapped: int = 0  # chunks aggregated by the previous batch's overlapped Spark job
    rows_good: int = 0
    rows_rejected: int = 0
    detections: int = 0
    files_written: int = 0
    # Where the batch's time went, in stage order (ms); fetch_ms is part of spark_ms.
    received_at: str | None = None  # UTC, when the batch's messages were in hand
    dedup_ms: int = 0  # looking up chunks already done
    spark_ms: int = 0  # waiting for Spark: the overlapped job's rest, and this batch's own
    fetch_ms: int | None = None  # S3 GET + chunk checks on the executors, summed over tasks
    quarantine_ms: int = 0
    apply_ms: int = 0
    delete_ms: int = 0  # SQS deletes of the applied chunks' messages, after their commits
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


# --- what to do with one chunk: pure decisions ------------------------------------------------

def size_rejection(size: int, max_bytes: int) -> str | None:
    """Why a chunk is rejected whole before anything reads it, from its size alone."""
    if size == 0:
        return "empty chunk (0 bytes)"
    if size > max_bytes:
        return f"too large: {size:,} bytes, the limit is {max_bytes:,}"
    return None


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


_CAUSE_LINE = re.compile(r"^\s*([\w.]+(?:Error|Exception|Failure)): (.+)$")


def failure_text(exc: BaseException) -> str:
    """One line saying what went wrong. A Spark task's error arrives wrapped in a long
    report; its last "SomeError: message" line is the cause worth recording."""
    lines = str(exc).strip().splitlines()
    causes = [m for m in map(_CAUSE_LINE.match, lines) if m]
    if causes:
        name, message = causes[-1].groups()
        return f"{name.rsplit('.', 1)[-1]}: {message}"[:1000]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:1000]


@dataclass
class Overlapped:
    """The Spark job running for the chunks after the batch being applied."""

    keys: list[str]
    future: Future


def _broken_gateway(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is py4j's broken connection to the JVM;
    not any socket's (an S3 connection refused says nothing about the JVM)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if any(kind.__name__ == "Py4JNetworkError" for kind in type(seen).__mro__):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _message_etag(received: Received) -> str:
    try:
        return ChunkMessage.from_json(received.body).etag
    except InvalidChunkMessage:
        return ""


def _ping(conn) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    conn.rollback()


class Worker:
    """Holds the process-wide clients and the chunks in hand; ``run_batch`` is one loop."""

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        s3,
        sqs,
        connect: Callable[[], object],
        aggregate: Callable[[dict[str, str]], BatchResult],
        runtime_alive: Callable[[], bool] = lambda: True,
        kill_runtime: Callable[[], None] = lambda: None,
        warm_up: Callable[[], object] | None = None,
        probe_spark: Callable[[], object] | None = None,
        y_start_time: datetime | None = None,
        clock: Callable[[], float] = time.monotonic,
        stop_event: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.s3 = s3
        self.sqs = sqs
        self._connect = connect
        self._aggregate = aggregate
        self._runtime_alive = runtime_alive
        self._kill_runtime = kill_runtime
        self._warm_up = warm_up
        self._probe_spark = probe_spark  # a made-up batch, no S3: None, no Spark probe
        # chunks that failed after a probe found the dependency answering: the next failure
        # is theirs (``_own_failure``)
        self._confirming: set[str] = set()
        # The Spark job running now (one at a time): its chunks, and since when (monotonic);
        # read by the watchdog, which ends the process when it overruns.
        self._job: tuple[list[str], float] | None = None
        self._stopped = threading.Event()  # run() is over: the watchdog has nothing to watch
        self._conn = None
        self.y_start_time = y_start_time or datetime.now(UTC)
        self._clock = clock
        self._last_activity = clock()
        self._last_backfill: float | None = None
        self._last_gap_alert: float | None = None
        self._last_full_hand_note: float | None = None
        self.stop_event = stop_event or threading.Event()
        self.dlq_url = settings.dlq_url
        self.inflight = InFlight(
            sqs, settings.queue_url, every_seconds=settings.heartbeat_after_seconds,
            extend_to_seconds=settings.visibility_timeout_seconds,
            on_error=lambda exc: logger.warning("heartbeat failed", extra={"error": str(exc)}))
        # The chunks in hand, in arrival order: with messages (held in flight) or found in S3.
        self.chunks: dict[str, ChunkMessage] = {}
        # Spark results of chunks in hand, aggregated ahead of their turn (one batch's result
        # is shared by its chunks); dropped with the chunk.
        self._aggregated: dict[str, BatchResult] = {}
        # those of them aggregated by an overlapped job, not yet counted in a batch summary
        self._ahead: set[str] = set()
        self._overlapped: Overlapped | None = None
        self._spark_thread = ThreadPoolExecutor(1, thread_name_prefix="spark-overlap")
        self._redriven: set[str] = set()
        self._applied_unacked: list[str] = []  # applied; their messages not deleted yet
        self._failed_before: set[str] = set()  # chunks in hand with a failure record
        self._made_progress = False  # the last batch applied a chunk
        self._database_down = False
        self.outage = outages.OutageGate(self.stop_event, settings.metrics_namespace)

    # --- PostgreSQL: retries, then an outage ----------------------------------------------

    def _connection(self):
        if self._conn is None or getattr(self._conn, "closed", 0):
            conn = self._connect()
            # Held for the session's life, so `replay --replace` refuses while we run.
            if not db.try_worker_lock(conn):
                conn.close()
                raise db.RebuildInProgress("`replay --replace` is rebuilding the database"
                                           " right now")
            unfinished = db.rebuild_in_progress(conn)
            if unfinished is not None:  # interrupted, or failed: its state is not to be used
                conn.close()
                raise db.RebuildInProgress(unfinished.describe())
            self._conn = conn
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):  # already broken: just drop it
                self._conn.close()
        self._conn = None

    def _reset_connection(self, attempt: int, exc: BaseException, delay: float) -> None:
        logger.warning("database unavailable, reconnecting", extra={
            "attempt": attempt, "error": str(exc).strip(), "retry_in_s": round(delay, 2)})
        self._drop_connection()

    def _database_answers(self) -> bool:
        try:
            _ping(self._connection())
            return True
        except TRANSIENT_DB_ERRORS:
            self._drop_connection()
            return False

    def db(self, fn: Callable[[object], object]):
        """Run ``fn(conn)``, reconnecting with bounded backoff while PostgreSQL is out of reach
        (``db.is_transient``); ``DatabaseUnavailable`` when it stays so. An error from a
        database that does answer - a statement it refused, even one psycopg2 reports as
        ``OperationalError`` - is raised at once, as it is: it belongs to the work (a chunk's
        failure), not to an outage."""
        try:
            return retry(lambda: fn(self._connection()), retry_on=TRANSIENT_DB_ERRORS,
                         retry_if=db.is_transient, attempts=self.settings.db_retry_attempts,
                         base=0.25, cap=4.0, on_retry=self._reset_connection)
        except psycopg2.Error as exc:
            if not db.is_outage(exc):
                self._end_failed_transaction()
                raise
            if self._database_answers():
                raise
            raise DatabaseUnavailable(str(exc).strip()) from exc

    def _end_failed_transaction(self) -> None:
        """Roll back what a refused statement left open, so that the connection serves the
        next work (``db.transaction`` does it already; work outside one may not)."""
        conn = self._conn
        if conn is not None and not conn.closed:
            try:
                conn.rollback()
            except psycopg2.Error:
                self._drop_connection()

    def _wait_for_database(self) -> None:
        """Block, receiving nothing, until PostgreSQL answers again (or a stop is asked)."""
        attempt = 0
        while not self.stop_event.is_set() and not self._database_answers():
            attempt += 1
            delay = backoff_delays(min(attempt, 8) + 1, base=0.5, cap=15.0)[-1]
            logger.warning("database still unavailable: receiving nothing",
                           extra={"attempt": attempt, "retry_in_s": delay})
            self.stop_event.wait(delay)
        if not self.stop_event.is_set():
            self._database_down = False
            logger.info("database is back: resuming", extra={"attempts": attempt})

    def close(self) -> None:
        self._drop_overlapped()
        self._spark_thread.shutdown(wait=True)
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- the loop ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start-up work: schema, the DLQ's address, detections committed but never written."""
        from spark_detector.db import migrate
        from spark_detector.status import dlq_url

        version = self.db(migrate)
        if self.dlq_url is None:
            self.dlq_url = dlq_url(self.sqs, self.settings.queue_url)
        written = self.publish()
        logger.info("worker started", extra={
            "schema_version": version, "y_start_time": self.y_start_time.isoformat(),
            "dlq_url": self.dlq_url, "outbox_files_written": len(written)})

    def run(self, *, drain: bool = False) -> int:
        """Loop until asked to stop; the process exit code."""
        self.start()
        if self._warm_up is not None:
            # warmed up while the first receive waits; the first Spark job waits for it
            self._overlapped = Overlapped([], self._spark_thread.submit(
                self._bounded, [], self._warm_up))
        watchdog = threading.Thread(target=self._watch_runtime, name="spark-watchdog",
                                    daemon=True)
        watchdog.start()
        try:
            with self.inflight:
                try:
                    code = self._loop()
                finally:
                    self._drop_overlapped()
                    self._spark_thread.shutdown(wait=True)
                self._give_back_all("stopping")
        finally:
            self._stopped.set()
        if code == 0 and drain:
            self.flush_partial("drain")
        logger.info("worker stopped", extra={"drain": drain, "exit_code": code})
        return code

    def _watch_runtime(self) -> None:
        """Notice a dead Spark runtime within a second, even while the loop waits on a long
        poll or on the very job that hangs: give the held messages back, end the JVM and the
        process, for the platform to restart it. Nothing is lost by ending abruptly: every
        effect is committed or redone (see top). It watches until ``run`` is over, through a
        graceful stop's last batch too."""
        while not self._stopped.wait(1.0):
            lost = self.runtime_lost(time.monotonic())
            if lost is None:
                continue
            logger.error("spark runtime lost: messages given back, exiting", extra={
                "error": lost, "exit_code": EXIT_SPARK_LOST,
                "chunk_keys": self._job[0] if self._job else []})
            with contextlib.suppress(Exception):
                self.inflight.release_all()
            with contextlib.suppress(Exception):  # a JVM stuck in its collector, say
                self._kill_runtime()
            os._exit(EXIT_SPARK_LOST)

    def runtime_lost(self, now: float) -> str | None:
        """Why the Spark runtime counts as dead at ``now`` (monotonic), or None."""
        if not self._runtime_alive():
            return "the Spark JVM has exited"
        job = self._job
        limit = self.settings.spark_job_timeout_seconds
        if job is not None and now - job[1] > limit:
            what = "the warm-up job" if not job[0] else f"the Spark job of {len(job[0])} chunk(s)"
            return (f"{what} ran longer than WORKER_SPARK_JOB_TIMEOUT_SECONDS={limit:g}:"
                    " the runtime is taken for dead")
        return None

    def _loop(self) -> int:
        while not self.stop_event.is_set():
            try:
                if not self._runtime_alive():
                    raise SparkRuntimeLost("the Spark JVM has exited")
                if self._database_down:
                    self._wait_for_database()
                    continue
                if self.outage.down is not None:
                    self.outage.wait(self._probe_outage)
                    continue
                summary = self.run_batch()
                self.idle_work(summary)
            except outages.DependencyOutage as exc:  # the held chunks wait: not given back
                self.outage.trip(exc.outage, list(self.chunks))
            except db.RebuildInProgress as exc:
                logger.error("rebuild in progress: messages given back, exiting", extra={
                    "error": str(exc), "exit_code": EXIT_REBUILD_IN_PROGRESS})
                self._give_back_all("rebuild in progress")
                return EXIT_REBUILD_IN_PROGRESS
            except DatabaseUnavailable as exc:
                self._database_down = True
                logger.error("database unavailable: messages given back, receiving nothing"
                             " until it answers", extra={"error": str(exc)})
                self._give_back_all("database unavailable")
            except SparkRuntimeLost as exc:
                logger.error("spark runtime lost: messages given back, exiting",
                             extra={"error": str(exc), "exit_code": EXIT_SPARK_LOST})
                self._give_back_all("spark runtime lost")
                return EXIT_SPARK_LOST
            except Exception as exc:  # the outermost loop: log with context, go on
                reason = outages.s3_outage_reason(exc)  # an S3 call of no chunk (publish, ...)
                if reason is not None:
                    self.outage.trip(outages.Outage(outages.S3, reason), list(self.chunks))
                    continue
                logger.exception("loop failed; its messages go back to the queue",
                                 extra={"chunk_keys": list(self.chunks)})
                self._give_back_all("loop failed")
                self.stop_event.wait(1.0)
        return 0

    def _give_back_all(self, why: str) -> None:
        """Make every held message visible at once: not a failure, not a postponement."""
        self._delete_applied(BatchSummary())  # done chunks' messages: deleted, not given back
        self._drop_overlapped()
        self.chunks.clear()
        self._aggregated.clear()
        self._ahead.clear()
        self._redriven.clear()
        try:
            released = self.inflight.release_all()
        except Exception as exc:  # they reappear after the visibility timeout anyway
            logger.warning("could not give the messages back", extra={"error": str(exc)})
            return
        if released:
            logger.info("messages given back to the queue", extra={
                "reason": why, "messages": released})

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
        prefix = self.settings.detections_prefix
        file_no = self.db(lambda conn: outbox.close_partial_file(conn, prefix))
        written = self.publish()
        if file_no is not None:
            logger.info("partial detection file flushed", extra={
                "reason": why, "file_no": file_no, "files_written": written})

    def publish(self) -> list[str]:
        s = self.settings
        return self.db(lambda conn: publish_pending(conn, self.s3, s.bucket, s.detections_prefix))

    def receive(self, wait_time_seconds: int) -> list[Received]:
        """At most as many messages as there is room for in hand (``WORKER_MAX_HELD_CHUNKS``).

        With a full hand - early chunks waiting for a predecessor that does not come - the
        worker receives nothing: the other messages stay in the queue untouched, instead of
        being received again and again until SQS's backstop dead-letters them without a
        reason. The stream's next chunks are still looked up in S3 (``_ready``), so the gap
        closes as soon as its chunk is there or an operator skips its number.
        """
        s = self.settings
        room = min(s.max_batch_chunks, s.max_held_chunks - len(self.chunks))
        if room <= 0:
            self._note_full_hand()
            self.stop_event.wait(wait_time_seconds)
            return []
        return receive_batch(
            self.sqs, s.queue_url, max_messages=room,
            wait_time_seconds=wait_time_seconds, window_seconds=s.batch_window_seconds,
            should_stop=self.stop_event.is_set)

    def run_batch(self) -> BatchSummary | None:
        self.db(_ping)  # receive nothing while PostgreSQL is away
        if (self._aggregated or self._overlapped) and self._made_progress:
            wait = 0  # chunks aggregated ahead are probably next: no long poll before them
        elif self.chunks:
            wait = WAIT_WHILE_HOLDING_SECONDS
        else:
            wait = self.settings.wait_time_seconds
        received = self.receive(wait)
        if not received and not self.chunks:
            return None
        batch_started = time.perf_counter()
        summary = BatchSummary(received_at=datetime.now(UTC).isoformat(timespec="milliseconds"))
        self._take(received, summary)
        with _timed(summary, "dedup_ms"):
            records = self._drop_settled(summary)
            self._reject_duplicate_numbers(summary)
        ready = self._ready(summary, records)
        if ready:
            self._process(ready, summary)
        self._delete_applied(summary)
        with _timed(summary, "publish_ms"):
            summary.files_written = len(self.publish())
        summary.batch_ms = _ms_since(batch_started)
        self._made_progress = summary.chunks > 0
        if summary.chunks or summary.rejected_chunks:
            self.outage.settled()
        if received or summary.chunks or summary.failures or summary.rejected_chunks:
            fields = summary.__dict__
            logger.info("batch done", extra={**fields, **emf.metric_directive(
                self.settings.metrics_namespace, fields, emf.BATCH_METRICS)})
        return summary

    # --- the chunks in hand -----------------------------------------------------------------

    def _take(self, received: list[Received], summary: BatchSummary) -> None:
        plan = plan_batch(received, self.settings.bucket)
        for poison in plan.poison:
            summary.poison += 1
            self._dead_letter_poison(poison.received, poison.reason)
        for key, message in plan.chunks.items():
            messages = plan.receipts[key]
            self.inflight.add(key, messages)
            self.chunks.setdefault(key, message)
            if any(m.dead_letter_reason for m in messages):
                self._redriven.add(key)

    def _drop_settled(self, summary: BatchSummary) -> dict[str, failures.ChunkFailure]:
        """Delete the messages of chunks done already (another version of such a key is
        recorded as a conflict), and stale ones of dead-lettered chunks; the failure records
        of the chunks still in hand."""
        keys = list(self.chunks)
        settled = self.db(lambda conn: detection_state.settled_etags(conn, keys))
        for key, etag in sorted(settled.items()):
            if not self._record_other_versions(key, etag, summary):
                summary.duplicates += 1
                logger.info("chunk already done: its messages are deleted",
                            extra={"chunk_key": key})
            self._forget(key)
        failed = self.db(lambda conn: failures.failures_of(conn, list(self.chunks)))
        for key, record in failed.items():
            if record.dead_lettered_at is None:
                continue
            if key in self._redriven:
                logger.info("dead-lettered chunk redriven: a fresh failure budget",
                            extra={"chunk_key": key})
                self.db(lambda conn, k=key: failures.forget_failures(conn, k))
                self._redriven.discard(key)
            else:
                logger.info("stale message of a dead-lettered chunk deleted",
                            extra={"chunk_key": key})
                self._forget(key)
        return {k: r for k, r in failed.items() if r.dead_lettered_at is None}

    def _delete_applied(self, summary: BatchSummary) -> None:
        """Delete the messages of the chunks applied since the last call, ten per SQS call.
        If SQS refuses, they stay held and are tried again next loop (a crash meanwhile
        only brings them back as duplicates)."""
        keys, self._applied_unacked = self._applied_unacked, []
        if not keys:
            return
        try:
            with _timed(summary, "delete_ms"):
                self.inflight.delete_many(keys)
        except Exception as exc:
            self._applied_unacked = keys + self._applied_unacked
            logger.warning("messages of applied chunks not deleted; tried again next loop",
                           extra={"chunk_keys": keys, "error": str(exc)})

    def _forget(self, key: str, delete_now: bool = True) -> None:
        if delete_now:
            self.inflight.delete(key)
        else:
            self._applied_unacked.append(key)
        self.chunks.pop(key, None)
        self._aggregated.pop(key, None)
        self._ahead.discard(key)
        self._redriven.discard(key)
        self._confirming.discard(key)

    def _reject_duplicate_numbers(self, summary: BatchSummary) -> None:
        """Reject whole, without reading them, the chunks in hand whose sequence number
        another chunk holds (two producers, a copy, a re-upload under another name)."""
        numbered = {key: seq for key in self.chunks if (seq := self._seq(key)) is not None}
        if not numbered:
            return
        holders = self.db(lambda conn: detection_state.number_holders(conn, numbered))
        for key, holder in sorted(holders.items()):
            reason = duplicate_reason(numbered[key], holder)
            self._run_for_chunk(key, summary, lambda k=key, r=reason, h=holder:
                                self._reject_whole(k, r, summary, duplicate_of=h))

    def _record_other_versions(self, key: str, settled_etag: str,
                               summary: BatchSummary) -> bool:
        """Record as conflicts the versions of settled ``key`` its messages in hand name,
        other than ``settled_etag`` (the key was uploaded again with other content); whether
        there were any. A version not known on either side ("") is none."""
        if not settled_etag:
            return False
        others = {_message_etag(m) for m in self.inflight.messages(key)}
        others.add(self.chunks[key].etag)
        others -= {"", settled_etag}
        for etag in sorted(others):
            record = self.db(lambda conn, e=etag: conflicts.record_conflict(
                conn, key, e, conflicts.OVERWRITTEN, settled_etag))
            summary.conflicts += 1
            logger.warning("chunk key uploaded again with other content", extra={
                "chunk_key": key, "etag": etag, "settled_etag": settled_etag,
                "seen": record.seen,
                "hint": "a chunk key is applied once: upload the new content under a new key"})
        return bool(others)

    def _ready(self, summary: BatchSummary,
               records: dict[str, failures.ChunkFailure]) -> list[str]:
        """The chunks to aggregate now, in apply order (docs/detection-semantics.md);
        ``records``: the failure records of the chunks in hand."""
        s = self.settings
        next_seq = self.db(detection_state.next_seq)
        now = datetime.now(UTC)
        blocked = {k for k, r in records.items() if r.retry_after and r.retry_after > now}
        self._failed_before = set(records)
        held = {key: self._seq(key) for key in self.chunks}
        plan = plan_ready_run(held, next_seq, s.max_batch_chunks, blocked)
        ready = list(plan.ready)
        if plan.look_from is not None:
            found = self._look_in_s3(plan.look_from, s.max_batch_chunks - len(ready))
            # another worker holds their messages: failing ones wait for their retry here too
            new = [key for key in found if key not in records]
            records.update((k, r) for k, r in self.db(
                lambda conn: failures.failures_of(conn, new)).items()
                if r.dead_lettered_at is None)
            blocked |= {k for k in new if k in records and records[k].retry_after
                        and records[k].retry_after > now}
            self._failed_before = set(records)
            for key in found:
                if key in blocked:
                    logger.info("chunk waits for its retry time", extra={
                        "chunk_key": key, "retry_after": records[key].retry_after.isoformat()})
                    break
                if key not in ready:
                    ready.append(key)
                    summary.pulled += 1
        summary.waiting = sum(1 for k in plan.waiting if k not in ready)
        if summary.waiting and not any(self._seq(k) == next_seq for k in ready):
            self._note_gap(next_seq, summary.waiting, blocked)
        suspects = [k for k in ready if k in records]
        if suspects:  # a chunk that failed before goes alone, so it cannot fail others
            first = suspects[0]
            ready = ready[: ready.index(first)] or [first]
        return self._reject_oversized(ready, summary)

    def _look_in_s3(self, first_seq: int, limit: int) -> list[str]:
        """Chunks ``first_seq, first_seq+1, ...`` found in S3, their events late or lost."""
        if limit <= 0:
            return []
        s = self.settings
        listed = {c.key: c for c in list_chunks(
            self.s3, s.bucket, s.chunk_prefix, s.chunk_suffix,
            start_after=start_after_seq(s.chunk_prefix, first_seq), limit=limit + 10)}
        found = consecutive_from(first_seq, {k: c.seq for k, c in listed.items()}, limit)
        for key in found:
            if key not in self.chunks:
                logger.info("chunk taken from S3 ahead of its message", extra={
                    "chunk_key": key, "seq": listed[key].seq})
                self.chunks[key] = listed[key].message(s.bucket)
        return found

    def _note_full_hand(self) -> None:
        now = self._clock()
        if self._last_full_hand_note is not None and now - self._last_full_hand_note < 60:
            return
        self._last_full_hand_note = now
        logger.warning("hand full: receiving nothing until the stream moves on", extra={
            "chunks_held": len(self.chunks), "max_held": self.settings.max_held_chunks,
            "hint": "early chunks wait for a predecessor: see `status`, line order"})

    def _note_gap(self, next_seq: int, waiting: int, blocked: set[str]) -> None:
        since = self.db(lambda conn: detection_state.mark_waiting(conn, next_seq))
        waited = (datetime.now(UTC) - since).total_seconds()
        now = self._clock()
        if waited < self.settings.gap_alert_seconds or (
                self._last_gap_alert is not None and now - self._last_gap_alert < 60):
            return
        self._last_gap_alert = now
        # "stream gap" is the alarm's metric filter (template.yaml, StreamGapAlarm)
        fields = {
            "waiting_for_seq": next_seq, "waiting_s": round(waited, 1),
            "chunks_waiting": waiting, "failing": sorted(blocked),
            "hint": "a chunk that will never come: python -m spark_detector skip-seq N"}
        logger.error("stream gap", extra={**fields, **emf.metric_directive(
            self.settings.metrics_namespace, fields, emf.GAP_METRICS)})

    def _reject_oversized(self, ready: list[str], summary: BatchSummary) -> list[str]:
        kept = []
        for key in ready:
            reason = size_rejection(self.chunks[key].size, self.settings.max_chunk_bytes)
            if reason is None:
                kept.append(key)
            else:
                self._run_for_chunk(key, summary, lambda k=key, r=reason: self._reject_whole(
                    k, r, summary))
        return kept

    # --- working on chunks ------------------------------------------------------------------

    def _process(self, keys: list[str], summary: BatchSummary, overlap: bool = True) -> bool:
        """Aggregate ``keys`` in one Spark job and settle them in order; True if all settled.

        A failed job is retried chunk by chunk at once, so that only the chunk at fault is
        counted as failing; sequenced chunks after a failing one wait for it.
        """
        try:
            with _timed(summary, "spark_ms"):
                results = self._results_for(keys, summary)
        except Exception as exc:
            self._raise_if_runtime_lost(exc)
            self._raise_if_s3_outage(exc)
            if len(keys) == 1:
                if self._own_failure(exc, keys[0], spark=True):
                    self._chunk_failed(keys[0], exc, summary)
                return False
            logger.warning("micro-batch failed: its chunks are retried one by one", extra={
                "chunk_keys": keys, "error": failure_text(exc)})
            stalled = False
            for key in keys:
                if stalled and self._seq(key) is not None:
                    continue
                # no overlapped job meanwhile: it would hold the failing chunk again
                if not self._process([key], summary, overlap=False) and self._seq(key) is not None:
                    stalled = True
            return False
        if overlap:
            self._overlap_next(keys, summary)
        stalled = False
        for key in keys:
            if stalled and self._seq(key) is not None:
                continue
            result = results[key]
            outcome = chunk_outcome(key, result)
            ok = self._run_for_chunk(key, summary, lambda o=outcome, r=result: self._settle(
                o, r, summary))
            if not ok:  # a retry aggregates it afresh
                self._aggregated.pop(key, None)
            stalled = stalled or (not ok and self._seq(key) is not None)
        return not stalled

    # --- Spark: this batch's job, and the next batch's, overlapped -------------------------

    def _results_for(self, keys: list[str], summary: BatchSummary) -> dict[str, BatchResult]:
        """The Spark result of each of ``keys``: aggregated ahead by the overlapped job, or
        now, in one job for the rest. One Spark job at a time: a running overlapped job is
        waited for first."""
        self._collect_overlapped(summary)
        missing = [key for key in keys if key not in self._aggregated]
        # a result kept from an earlier batch's own job (its chunk waited) is no overlap
        ahead = self._ahead.intersection(keys)
        summary.overlapped += len(ahead)
        self._ahead -= ahead
        if missing:
            self._keep(missing, self._spark_job(missing), summary)
        return {key: self._aggregated[key] for key in keys}

    def _spark_job(self, keys: list[str]) -> BatchResult:
        """The Spark job of ``keys``, with each aggregated chunk's pairs as COPY text
        (``BatchResult.prepared``): built on the Spark thread, all the apply needs. Chunks
        larger in all than ``WORKER_MAX_CHUNK_BYTES`` are aggregated in several jobs, one
        after the other (``spark_job.bounded_groups``)."""
        failpoint("before_spark")
        # on the Spark thread too, while the main thread may forget chunks: one lookup each
        messages = {key: message for key in keys
                    if (message := self.chunks.get(key)) is not None}
        sizes = {key: m.size for key, m in messages.items()}
        # the version of each chunk its message names (an ETag; "" when it names none)
        etags = {key: m.etag for key, m in messages.items()}
        result = merged_results([
            self._bounded(group, lambda g=group: self._aggregate(
                {k: etags.get(k, "") for k in g}))
            for group in bounded_groups(keys, lambda k: sizes.get(k, 0),
                                        self.settings.max_chunk_bytes)])
        failpoint("after_spark")
        return result

    def _bounded(self, keys: list[str], job: Callable[[], object]):
        """Run one Spark job under the watchdog's eye (``WORKER_SPARK_JOB_TIMEOUT_SECONDS``)."""
        self._job = (keys, time.monotonic())
        try:
            return job()
        finally:
            self._job = None

    def _keep(self, keys: list[str], result: BatchResult, summary: BatchSummary | None) -> None:
        if summary is not None and result.fetch_ms is not None:
            summary.fetch_ms = (summary.fetch_ms or 0) + round(result.fetch_ms)
        for key in keys:
            if key in self.chunks:  # not forgotten meanwhile
                self._aggregated[key] = result

    def _overlap_next(self, applying: list[str], summary: BatchSummary) -> None:
        """Start the Spark job of the chunks that come after ``applying``, on the Spark
        thread, so that it runs while ``applying`` is applied.

        A full batch means a backlog, where the batch being applied is usually all the worker
        holds: the next messages are received now, without waiting (at the nominal rate a
        batch holds one chunk and nothing is received here, which would only add latency).
        Chunks that failed before are left out: they go alone, in their turn, so that a
        failure stays theirs. At most two batches' results are held ahead.
        """
        s = self.settings
        if (not s.overlap_batches or self._overlapped is not None
                or len(self._aggregated) >= 2 * s.max_batch_chunks):
            return
        if (len(applying) >= s.max_batch_chunks
                and len(self._candidates(applying)) < s.max_batch_chunks):
            self._take(self.receive(0), summary)
        keys = self._candidates(applying)[: s.max_batch_chunks]
        if keys:
            self._overlapped = Overlapped(keys, self._spark_thread.submit(self._spark_job, keys))

    def _candidates(self, applying: list[str]) -> list[str]:
        """Chunks in hand, not yet aggregated, not suspect, not too large: production order."""
        skip = set(applying) | set(self._aggregated) | self._redriven | self._failed_before
        keys = [
            key for key, message in self.chunks.items()
            if key not in skip
            and size_rejection(message.size, self.settings.max_chunk_bytes) is None]
        return sorted(keys, key=lambda k: (self._seq(k) is None, self._seq(k) or 0, k))

    def _collect_overlapped(self, summary: BatchSummary | None) -> None:
        """Wait for the overlapped job, if any, and keep its results; a failed job is dropped:
        its chunks are aggregated again in their turn, where a failure is theirs."""
        overlapped, self._overlapped = self._overlapped, None
        if overlapped is None:
            return
        try:
            outcome = overlapped.future.result()
        except Exception as exc:
            self._raise_if_runtime_lost(exc)
            logger.info("overlapped Spark job failed: its chunks are aggregated in their turn",
                        extra={"chunk_keys": overlapped.keys, "error": failure_text(exc)})
            return
        if overlapped.keys:  # the start-up warm-up has none
            self._keep(overlapped.keys, outcome, summary)
            self._ahead.update(key for key in overlapped.keys if key in self._aggregated)

    def _drop_overlapped(self) -> None:
        """Wait for a running overlapped job and drop what it produced (stopping, outage)."""
        overlapped, self._overlapped = self._overlapped, None
        if overlapped is not None:
            with contextlib.suppress(Exception):
                overlapped.future.result()

    def _run_for_chunk(self, key: str, summary: BatchSummary, effect: Callable[[], None]) -> bool:
        """Run one chunk's effects; a failure is that chunk's alone. True if it settled."""
        try:
            effect()
            return True
        except (DatabaseUnavailable, SparkRuntimeLost, outages.DependencyOutage):
            raise
        except OutOfTurn as exc:
            logger.info("chunk waits for its predecessor", extra={
                "chunk_key": key, "seq": exc.seq, "next_seq": exc.next_seq})
            return False
        except DuplicateNumber as exc:  # its number was settled since it was picked
            reason, holder = str(exc), exc.holder
            return self._run_for_chunk(key, summary, lambda: self._reject_whole(
                key, reason, summary, duplicate_of=holder))
        except Exception as exc:
            self._raise_if_runtime_lost(exc)
            if self._own_failure(exc, key):
                self._chunk_failed(key, exc, summary)
            return False

    def _settle(self, outcome: ChunkOutcome, result: BatchResult, summary: BatchSummary) -> None:
        if isinstance(outcome, Superseded):
            self._superseded(outcome.key, outcome.reason, summary)
            return
        if isinstance(outcome, Unavailable):
            raise ChunkUnavailable(outcome.reason)
        if isinstance(outcome, RejectWhole):
            self._reject_whole(outcome.key, outcome.reason, summary)
            return
        self._apply(outcome.key, result, summary)

    def _seq(self, key: str) -> int | None:
        """The producer's sequence number of ``key``; None for a hand upload."""
        return chunk_seq(key, self.settings.chunk_prefix)

    def _chunk_ref(self, key: str) -> detection_state.ChunkRef:
        message = self.chunks[key]
        return detection_state.ChunkRef(key=key, etag=message.etag,
                                        event_time=parse_event_time(message.event_time),
                                        prefix=self.settings.chunk_prefix)

    def _reject_whole(self, key: str, reason: str, summary: BatchSummary,
                      duplicate_of: str | None = None) -> None:
        s = self.settings
        chunk = self._chunk_ref(key)
        qkey = quarantine_chunk(self.s3, s.bucket, s.quarantine_prefix, key, reason)
        self.db(lambda conn: detection_state.record_rejected_chunk(
            conn, chunk, reason, qkey, duplicate_of=duplicate_of))
        if duplicate_of is not None:
            logger.warning("duplicate sequence number", extra={
                "chunk_key": key, "seq": chunk.seq, "holder": duplicate_of,
                "quarantine_key": qkey})
            summary.duplicate_numbers += 1
        else:
            logger.warning("chunk rejected whole", extra={
                "chunk_key": key, "reason": reason, "quarantine_key": qkey})
        self._record_other_versions(key, chunk.etag, summary)
        summary.rejected_chunks += 1
        self._forget(key)

    def _superseded(self, key: str, reason: str, summary: BatchSummary) -> None:
        """The version the chunk's message names was overwritten before it was read: no
        failure, and nothing to apply. The messages naming that version are deleted; the
        current version's own S3 event (or a look-up in S3, or the backfill) brings it. A
        message of another version already in hand takes over at once."""
        stale = self.chunks[key].etag
        self.db(lambda conn: conflicts.record_conflict(conn, key, stale, conflicts.SUPERSEDED))
        summary.conflicts += 1
        logger.warning("chunk overwritten after its event: that version is not read", extra={
            "chunk_key": key, "etag": stale, "reason": reason})
        held = self.inflight.messages(key)
        self.inflight.delete_some(key, [m for m in held if _message_etag(m) == stale])
        newer = [m for m in held if _message_etag(m) != stale]
        self._aggregated.pop(key, None)
        if newer:
            self.chunks[key] = ChunkMessage.from_json(newer[-1].body)
        else:
            self._forget(key)

    def _apply(self, key: str, result: BatchResult, summary: BatchSummary) -> None:
        s = self.settings
        chunk = self._chunk_ref(key)
        aggregates = result.aggregates[key]
        rejects = result.rejected_rows.get(key, ())
        if rejects:
            with _timed(summary, "quarantine_ms"):
                qkey = quarantine_rows(self.s3, s.bucket, s.quarantine_prefix, key, rejects)
            logger.warning("rows rejected", extra={
                "chunk_key": key, "rows_rejected": len(rejects), "quarantine_key": qkey,
                "first_reason": f"row {rejects[0].row}: {rejects[0].reason}"})
        with _timed(summary, "apply_ms"):
            detections = self.db(lambda conn: detection_state.try_apply_chunk(
                conn, chunk, aggregates, y_start_time=self.y_start_time,
                thresholds=s.thresholds, spark_ms=summary.spark_ms,
                detections_prefix=s.detections_prefix, prepared=result.prepared[key]))
        failpoint("after_commit")
        self._record_other_versions(key, chunk.etag, summary)
        self._forget(key, delete_now=False)  # with the batch's others: _delete_applied
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

    # --- failures ---------------------------------------------------------------------------

    def _raise_if_runtime_lost(self, exc: BaseException) -> None:
        """``SparkRuntimeLost`` when ``exc`` came from a JVM that is gone. The gateway's
        socket breaks a moment before the JVM's process is reaped: an error that says so is
        given that moment, not charged to the chunk at once."""
        if _broken_gateway(exc):
            deadline = time.monotonic() + JVM_EXIT_GRACE_SECONDS
            while self._runtime_alive() and time.monotonic() < deadline:
                time.sleep(0.1)
        if not self._runtime_alive():
            raise SparkRuntimeLost(failure_text(exc)) from exc

    def _raise_if_s3_outage(self, exc: BaseException) -> None:
        reason = outages.s3_outage_reason(exc)
        if reason is not None:
            raise outages.DependencyOutage(outages.Outage(outages.S3, reason)) from exc

    def _own_failure(self, exc: BaseException, key: str, spark: bool = False) -> bool:
        """Whether ``exc`` is ``key``'s own failure, to be counted; ``DependencyOutage`` when
        it is an outage of S3 or of the Spark runtime (``outages``). An AccessDenied, or a
        failed Spark job (``spark``), is the chunk's only if a probe finds the dependency
        serving other work and the chunk fails again after that probe: the first time it is
        tried again uncounted, so that a fault that ended meanwhile is charged to nobody."""
        self._raise_if_s3_outage(exc)
        s = self.settings
        if isinstance(exc, ChunkUnavailable) and outages.access_denied(str(exc)):
            outage = outages.probe_s3(self.s3, s.bucket, s.chunk_prefix, avoid=[key])
        elif spark and self._probe_spark is not None:
            outage = self._spark_outage()
        else:
            return True
        if outage is not None:
            self._confirming.discard(key)
            raise outages.DependencyOutage(outage) from exc
        if key in self._confirming:
            self._confirming.discard(key)
            return True
        self._confirming.add(key)
        logger.info("chunk failed while its dependency answers: tried again before it is"
                    " counted", extra={"chunk_key": key, "error": failure_text(exc)})
        return False

    def _spark_outage(self) -> outages.Outage | None:
        """None if a made-up batch (no S3) runs, else why not."""
        try:
            self._bounded([], self._probe_spark)
        except Exception as exc:
            self._raise_if_runtime_lost(exc)
            return outages.Outage(outages.SPARK, failure_text(exc), hint="a made-up batch"
                                  " fails too: every Spark job fails alike; see the driver's log")
        return None

    def _probe_outage(self) -> outages.Outage | None:
        """The gate's probe of the dependency that is out: None once it answers."""
        if self.outage.down is not None and self.outage.down.dependency == outages.SPARK:
            return self._spark_outage()
        s = self.settings
        return outages.probe_s3(self.s3, s.bucket, s.chunk_prefix)

    def _chunk_failed(self, key: str, exc: BaseException, summary: BatchSummary) -> None:
        s = self.settings
        error = failure_text(exc)
        record = self.db(lambda conn: failures.record_failure(
            conn, key, self._seq(key), error, s.retry_delay_seconds))
        summary.failures += 1
        logger.warning("chunk failed", extra={
            "chunk_key": key, "attempts": record.attempts, "max_attempts": s.max_chunk_failures,
            "error": error, "retry_after": record.retry_after.isoformat()
            if record.retry_after else None})
        if record.attempts >= s.max_chunk_failures:
            self._dead_letter(key, error, record.attempts, summary)

    def _dead_letter(self, key: str, reason: str, attempts: int, summary: BatchSummary) -> None:
        """Move a chunk that keeps failing to the DLQ; the stream goes on without it.

        The DLQ message is sent before anything is marked: a crash in between leaves the
        chunk to fail once more and be sent again (two DLQ messages), never to be lost.
        """
        if self.dlq_url is None:
            logger.error("chunk keeps failing and no DLQ is configured: it will be retried",
                         extra={"chunk_key": key, "attempts": attempts})
            return
        messages = self.inflight.messages(key)
        body = messages[0].body if messages else self.chunks[key].to_json()
        send_to_dead_letter_queue(self.sqs, self.dlq_url, body, reason=reason,
                                  attempts=attempts)
        chunk = self._chunk_ref(key)
        self.db(lambda conn: failures.mark_dead_lettered(conn, key))
        self.db(lambda conn: detection_state.settle_dead_lettered(conn, chunk, reason))
        self._forget(key)
        summary.dead_lettered += 1
        logger.error("chunk moved to the DLQ after repeated failures", extra={
            "chunk_key": key, "attempts": attempts, "reason": reason})

    def _dead_letter_poison(self, received: Received, reason: str) -> None:
        """A message that is no chunk message will never work: straight to the DLQ."""
        logger.error("poison message moved to the DLQ", extra={
            "message_id": received.message_id, "reason": reason})
        if self.dlq_url is None:
            return  # left in flight: the queue's redrive policy takes it after its visibility
        send_to_dead_letter_queue(self.sqs, self.dlq_url, received.body, reason=reason,
                                  attempts=1)
        delete_messages(self.sqs, self.settings.queue_url, [received])
