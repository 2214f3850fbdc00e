"""The long-running loop of Mechanism Y: SQS in, Spark micro-batches, exactly-once out.

Each loop: receive messages (they join the chunks the worker holds, ``hand``, up to
``WORKER_MAX_HELD_CHUNKS``), drop chunks already done (recording another version of such a
key as a conflict), reject whole the chunks whose sequence number another chunk holds
(``settle``), pick the chunks that may be applied now (``turns``: production order, a
predecessor looked up in S3 when its event is late or lost), aggregate them in ONE Spark
job (``spark_jobs``), then settle each chunk in order (``settle``). PostgreSQL is reached
through one session (``database``). Effects for one chunk, and why a crash between any two
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
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

from chunk_contract.message import ChunkMessage
from chunk_contract.sqs_batch import dlq_url
from spark_detector import db
from spark_detector.config import WorkerSettings
from spark_detector.engine import outbox
from spark_detector.engine.failures import failure_text
from spark_detector.engine.publish import publish_pending
from spark_detector.s3_errors import s3_outage_reason
from spark_detector.spark.batch_result import BatchResult
from spark_detector.worker import emf
from spark_detector.worker.chunk_queue import InFlight, Received, receive_batch
from spark_detector.worker.database import Database, ping
from spark_detector.worker.errors import (
    S3,
    DatabaseUnavailable,
    DependencyOutage,
    Outage,
    SparkJobFailed,
    SparkRuntimeLost,
)
from spark_detector.worker.hand import Hand
from spark_detector.worker.outages import DependencyChecks, OutageGate
from spark_detector.worker.settle import Settler, chunk_outcome
from spark_detector.worker.spark_jobs import SparkJobs
from spark_detector.worker.summary import BatchSummary, ms_since, timed
from spark_detector.worker.turns import Turns

logger = logging.getLogger(__name__)

# Exit codes of `run` besides 0 and 2 (a setting): docs/worker.md
EXIT_SPARK_LOST = 3  # the JVM died or a job overran: the messages were given back
EXIT_REBUILD_IN_PROGRESS = db.EXIT_REBUILD_IN_PROGRESS  # `replay --replace` has not finished
WAIT_WHILE_HOLDING_SECONDS = 1  # long poll while chunks wait: others may settle the gap


class Worker:
    """The loop and its watchdog; ``run_batch`` is one turn. Its parts: the chunks in hand
    (``hand``), the database session (``db``), the Spark jobs (``jobs``), whose turn it is
    (``turns``) and the settling of each chunk (``settler``)."""

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        s3,
        sqs,
        connect: Callable[[], Any],
        aggregate: Callable[[dict[str, str]], BatchResult],
        runtime_alive: Callable[[], bool] = lambda: True,
        kill_runtime: Callable[[], None] = lambda: None,
        warm_up: Callable[[], object] | None = None,
        probe_spark: Callable[[], object] | None = None,
        probe_s3: Any = None,
        y_start_time: datetime | None = None,
        clock: Callable[[], float] = time.monotonic,
        stop_event: threading.Event | None = None,
        backfill: Callable[[Any], object] | None = None,
    ) -> None:
        self.settings = settings
        self.s3 = s3
        self.sqs = sqs
        self._kill_runtime = kill_runtime
        self._warm_up = warm_up
        # The periodic backfill (WORKER_BACKFILL_EVERY), given by the caller: ops.backfill
        # with this process's clients, called with a connection.
        self._backfill = backfill
        self._stopped = threading.Event()  # run() is over: the watchdog has nothing to watch
        self.y_start_time = y_start_time or datetime.now(UTC)
        self._clock = clock
        self._last_activity = clock()
        self._last_backfill: float | None = None
        self.stop_event = stop_event or threading.Event()
        self._made_progress = False  # the last batch applied a chunk
        self.inflight = InFlight(
            sqs, settings.queue_url, every_seconds=settings.heartbeat_after_seconds,
            extend_to_seconds=settings.visibility_timeout_seconds,
            on_error=lambda exc: logger.warning("heartbeat failed", extra={"error": str(exc)}))
        self.hand = Hand(settings, self.inflight)
        self.db = Database(connect, settings.db_retry_attempts, self.stop_event)
        self.jobs = SparkJobs(settings, self.hand, aggregate, runtime_alive)
        self.turns = Turns(settings, s3, self.db, self.hand, clock)
        self.checks = DependencyChecks(settings, s3, self.hand, self.jobs, probe_spark,
                                       probe_client=probe_s3)
        self.outage = OutageGate(self.stop_event, settings.metrics_namespace)
        self.settler = Settler(settings, s3, sqs, self.db, self.hand,
                               y_start_time=self.y_start_time,
                               raise_if_runtime_lost=self.jobs.raise_if_runtime_lost,
                               own_failure=self.checks.own_failure)

    @property
    def chunks(self) -> dict[str, ChunkMessage]:
        """The chunks in hand, in arrival order."""
        return self.hand.chunks

    def runtime_lost(self, now: float) -> str | None:
        return self.jobs.runtime_lost(now)

    def close(self) -> None:
        self.jobs.close()
        self.db.close()

    # --- the loop ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start-up work: schema, the DLQ's address, detections committed but never written."""
        version = self.db.run(db.migrate)
        if self.settler.dlq_url is None:
            self.settler.dlq_url = dlq_url(self.sqs, self.settings.queue_url)
        written = self.publish()
        logger.info("worker started", extra={
            "schema_version": version, "y_start_time": self.y_start_time.isoformat(),
            "dlq_url": self.settler.dlq_url, "outbox_files_written": len(written)})

    def run(self, *, drain: bool = False) -> int:
        """Loop until asked to stop; the process exit code."""
        self.start()
        if self._warm_up is not None:
            # warmed up while the first receive waits; the first Spark job waits for it
            self.jobs.start_warm_up(self._warm_up)
        watchdog = threading.Thread(target=self._watch_runtime, name="spark-watchdog",
                                    daemon=True)
        watchdog.start()
        try:
            with self.inflight:
                try:
                    code = self.loop()
                finally:
                    self.jobs.close()
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
            job = self.jobs.job
            logger.error("spark runtime lost: messages given back, exiting", extra={
                "error": lost, "exit_code": EXIT_SPARK_LOST,
                "chunk_keys": job[0] if job else []})
            with contextlib.suppress(Exception):  # ending anyway: nothing to do with an error
                self.inflight.release_all()
            with contextlib.suppress(Exception):  # a JVM stuck in its collector, say
                self._kill_runtime()
            os._exit(EXIT_SPARK_LOST)

    def loop(self) -> int:
        """Turn after turn until asked to stop; the exit code. An outage or a lost runtime
        gives every held message back; anything else fails this turn alone."""
        while not self.stop_event.is_set():
            try:
                if not self.jobs.runtime_alive():
                    raise SparkRuntimeLost("the Spark JVM has exited")
                if self.db.down:
                    self.db.wait_until_back()
                    continue
                if self.outage.down is not None:
                    self.outage.wait(lambda: self.checks.probe(self.outage.down))
                    continue
                summary = self.run_batch()
                self.idle_work(summary)
            except DependencyOutage as exc:  # the held chunks wait: not given back
                self.outage.trip(exc.outage, list(self.hand.chunks))
            except db.RebuildInProgress as exc:
                logger.error("rebuild in progress: messages given back, exiting", extra={
                    "error": str(exc), "exit_code": EXIT_REBUILD_IN_PROGRESS})
                self._give_back_all("rebuild in progress")
                return EXIT_REBUILD_IN_PROGRESS
            except DatabaseUnavailable as exc:
                self.db.down = True
                logger.error("database unavailable: messages given back, receiving nothing"
                             " until it answers", extra={"error": str(exc)})
                self._give_back_all("database unavailable")
            except SparkRuntimeLost as exc:
                logger.error("spark runtime lost: messages given back, exiting",
                             extra={"error": str(exc), "exit_code": EXIT_SPARK_LOST})
                self._give_back_all("spark runtime lost")
                return EXIT_SPARK_LOST
            except Exception as exc:  # the one catch-all, at the top: log with context, go on
                reason = s3_outage_reason(exc)  # an S3 call of no chunk (publish, ...)
                if reason is not None:
                    self.outage.trip(Outage(S3, reason), list(self.hand.chunks))
                    continue
                logger.exception("loop failed; its messages go back to the queue",
                                 extra={"chunk_keys": list(self.hand.chunks)})
                self._give_back_all("loop failed")
                self.stop_event.wait(1.0)
        return 0

    def _give_back_all(self, why: str) -> None:
        """Make every held message visible at once: not a failure, not a postponement."""
        self.jobs.drop_overlapped()
        self.hand.give_back_all(why)

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
        if s.backfill_every_seconds is not None and due and self._backfill is not None:
            self._last_backfill = now
            self.db.run(self._backfill)

    def flush_partial(self, why: str) -> None:
        prefix = self.settings.detections_prefix
        file_no = self.db.run(lambda conn: outbox.close_partial_file(conn, prefix))
        written = self.publish()
        if file_no is not None:
            logger.info("partial detection file flushed", extra={
                "reason": why, "file_no": file_no, "files_written": written})

    def publish(self) -> list[str]:
        s = self.settings
        return self.db.run(lambda conn: publish_pending(conn, self.s3, s.bucket,
                                                        s.detections_prefix))

    def receive(self, wait_time_seconds: int) -> list[Received]:
        """At most as many messages as there is room for in hand (``WORKER_MAX_HELD_CHUNKS``).

        With a full hand - early chunks waiting for a predecessor that does not come - the
        worker receives nothing: the other messages stay in the queue untouched, instead of
        being received again and again until SQS's backstop dead-letters them without a
        reason. The stream's next chunks are still looked up in S3 (``turns``), so the gap
        closes as soon as its chunk is there or an operator skips its number.
        """
        s = self.settings
        room = self.hand.room()
        if room <= 0:
            self.turns.note_full_hand()
            self.stop_event.wait(wait_time_seconds)
            return []
        return receive_batch(
            self.sqs, s.queue_url, max_messages=room,
            wait_time_seconds=wait_time_seconds, window_seconds=s.batch_window_seconds,
            should_stop=self.stop_event.is_set)

    def _take(self, received: list[Received], summary: BatchSummary) -> None:
        for poison in self.hand.take(received):
            self.settler.dead_letter_poison(poison, summary)

    def run_batch(self) -> BatchSummary | None:
        self.db.run(ping)  # receive nothing while PostgreSQL is away
        if self.jobs.pending and self._made_progress:
            wait = 0  # chunks aggregated ahead are probably next: no long poll before them
        elif self.hand.chunks:
            wait = WAIT_WHILE_HOLDING_SECONDS
        else:
            wait = self.settings.wait_time_seconds
        received = self.receive(wait)
        if not received and not self.hand.chunks:
            return None
        batch_started = time.perf_counter()
        summary = BatchSummary(received_at=datetime.now(UTC).isoformat(timespec="milliseconds"))
        self._take(received, summary)
        with timed(summary, "dedup_ms"):
            records = self.settler.drop_settled(summary)
            self.settler.reject_duplicate_numbers(summary)
        ready = self.settler.reject_oversized(self.turns.ready(summary, records), summary)
        if ready:
            self._process(ready, summary)
        self.hand.delete_applied(summary)
        with timed(summary, "publish_ms"):
            summary.files_written = len(self.publish())
        summary.batch_ms = ms_since(batch_started)
        self._made_progress = summary.chunks > 0
        if summary.chunks or summary.rejected_chunks:
            self.outage.settled()
        if received or summary.chunks or summary.failures or summary.rejected_chunks:
            fields = summary.__dict__
            logger.info("batch done", extra={**fields, **emf.metric_directive(
                self.settings.metrics_namespace, fields, emf.BATCH_METRICS)})
        return summary

    def _process(self, keys: list[str], summary: BatchSummary, overlap: bool = True) -> bool:
        """Aggregate ``keys`` in one Spark job and settle them in order; True if all settled.

        A failed job is retried chunk by chunk at once, so that only the chunk at fault is
        counted as failing; sequenced chunks after a failing one wait for it.
        """
        hand, settler = self.hand, self.settler
        try:
            results = self.jobs.results_for(keys, summary)
        except SparkJobFailed as failed:
            cause = failed.__cause__ or failed
            self.checks.raise_if_s3_outage(cause)
            if len(keys) == 1:
                if self.checks.own_failure(cause, keys[0], spark=True):
                    settler.chunk_failed(keys[0], cause, summary)
                return False
            logger.warning("micro-batch failed: its chunks are retried one by one", extra={
                "chunk_keys": keys, "error": failure_text(cause)})
            stalled = False
            for key in keys:
                if stalled and hand.seq(key) is not None:
                    continue
                # no overlapped job meanwhile: it would hold the failing chunk again
                if not self._process([key], summary, overlap=False) and hand.seq(key) is not None:
                    stalled = True
            return False
        if overlap:
            self.jobs.overlap_next(keys, lambda: self._take(self.receive(0), summary))
        stalled = False
        for key in keys:
            if stalled and hand.seq(key) is not None:
                continue
            result = results[key]
            outcome = chunk_outcome(key, result)
            ok = settler.run_for_chunk(key, summary, partial(settler.settle, outcome, result,
                                                             summary))
            if not ok:  # a retry aggregates it afresh
                hand.aggregated.pop(key, None)
            stalled = stalled or (not ok and hand.seq(key) is not None)
        return not stalled
