"""The worker's Spark jobs: this batch's, and the next batch's run ahead on a second thread
("overlap") while this one is applied; each under the watchdog's time bound.

A job that fails is a ``SparkJobFailed`` (the batch's fault, narrowed down by the loop chunk by
chunk), unless the runtime is gone: then ``SparkRuntimeLost``. A failed overlapped job is
dropped uncounted: its chunks are aggregated again in their turn.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from spark_detector.config import WorkerSettings
from spark_detector.engine.failures import failure_text
from spark_detector.failpoints import failpoint
from spark_detector.spark.batch_result import BatchResult, merged_results
from spark_detector.spark.job import bounded_groups
from spark_detector.worker.errors import SparkJobFailed, SparkRuntimeLost
from spark_detector.worker.hand import Hand
from spark_detector.worker.summary import BatchSummary, timed

logger = logging.getLogger(__name__)

# A JVM whose gateway connection broke is usually exiting: how long to wait for it to be gone
# before a job's error is taken for the chunk's own.
JVM_EXIT_GRACE_SECONDS = 5.0


def broken_gateway(exc: BaseException) -> bool:
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


@dataclass
class Overlapped:
    """The Spark job running for the chunks after the batch being applied."""

    keys: list[str]
    future: Future


class SparkJobs:
    """Runs ``aggregate`` (one micro-batch's Spark job: ``{key: etag}`` in, a result out) for
    the chunks in ``hand``, one job at a time, and keeps the results in the hand."""

    def __init__(self, settings: WorkerSettings, hand: Hand,
                 aggregate: Callable[[dict[str, str]], BatchResult],
                 runtime_alive: Callable[[], bool]) -> None:
        self.settings = settings
        self.hand = hand
        self._aggregate = aggregate
        self.runtime_alive = runtime_alive
        # The Spark job running now: its chunks, and since when (monotonic); read by the
        # watchdog, which ends the process when it overruns.
        self.job: tuple[list[str], float] | None = None
        self._overlapped: Overlapped | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="spark-overlap")

    @property
    def pending(self) -> bool:
        """Whether results are in hand or on their way: the next chunks are probably ready."""
        return bool(self.hand.aggregated or self._overlapped)

    def start_warm_up(self, warm_up: Callable[[], object]) -> None:
        """Warm the runtime up on the Spark thread; the first real job waits for it."""
        self._overlapped = Overlapped([], self._thread.submit(self.bounded, [], warm_up))

    def runtime_lost(self, now: float) -> str | None:
        """Why the Spark runtime counts as dead at ``now`` (monotonic), or None."""
        if not self.runtime_alive():
            return "the Spark JVM has exited"
        job = self.job
        limit = self.settings.spark_job_timeout_seconds
        if job is not None and now - job[1] > limit:
            what = "the warm-up job" if not job[0] else f"the Spark job of {len(job[0])} chunk(s)"
            return (f"{what} ran longer than WORKER_SPARK_JOB_TIMEOUT_SECONDS={limit:g}:"
                    " the runtime is taken for dead")
        return None

    def raise_if_runtime_lost(self, exc: BaseException) -> None:
        """``SparkRuntimeLost`` when ``exc`` came from a JVM that is gone. The gateway's
        socket breaks a moment before the JVM's process is reaped: an error that says so is
        given that moment, not charged to the chunk at once."""
        if broken_gateway(exc):
            deadline = time.monotonic() + JVM_EXIT_GRACE_SECONDS
            while self.runtime_alive() and time.monotonic() < deadline:
                time.sleep(0.1)
        if not self.runtime_alive():
            raise SparkRuntimeLost(failure_text(exc)) from exc

    def bounded(self, keys: list[str], job: Callable[[], Any]) -> Any:
        """Run one Spark job under the watchdog's eye (``WORKER_SPARK_JOB_TIMEOUT_SECONDS``)."""
        self.job = (keys, time.monotonic())
        try:
            return job()
        finally:
            self.job = None

    def results_for(self, keys: list[str], summary: BatchSummary) -> dict[str, BatchResult]:
        """The Spark result of each of ``keys``: aggregated ahead by the overlapped job, or
        now, in one job for the rest; ``SparkJobFailed`` when that job fails. One Spark job at
        a time: a running overlapped job is waited for first."""
        with timed(summary, "spark_ms"):
            self.collect_overlapped(summary)
            hand = self.hand
            missing = [key for key in keys if key not in hand.aggregated]
            # a result kept from an earlier batch's own job (its chunk waited) is no overlap
            ahead = hand.ahead.intersection(keys)
            summary.overlapped += len(ahead)
            hand.ahead -= ahead
            if missing:
                self._keep(missing, self._job_of(missing), summary)
            return {key: hand.aggregated[key] for key in keys}

    def _job_of(self, keys: list[str]) -> BatchResult:
        try:
            return self.spark_job(keys)
        except SparkRuntimeLost:
            raise
        except Exception as exc:  # the job's error, whatever Spark or S3 made of it
            self.raise_if_runtime_lost(exc)
            raise SparkJobFailed(keys, exc) from exc

    def spark_job(self, keys: list[str]) -> BatchResult:
        """The Spark job of ``keys``, with each aggregated chunk's pairs as COPY text
        (``BatchResult.prepared``): built on the Spark thread, all the apply needs. Chunks
        larger in all than ``WORKER_MAX_CHUNK_BYTES`` are aggregated in several jobs, one
        after the other (``spark.job.bounded_groups``)."""
        failpoint("before_spark")
        # on the Spark thread too, while the main thread may forget chunks: one lookup each
        messages = {key: message for key in keys
                    if (message := self.hand.chunks.get(key)) is not None}
        sizes = {key: m.size for key, m in messages.items()}
        # the version of each chunk its message names (an ETag; "" when it names none)
        etags = {key: m.etag for key, m in messages.items()}
        result = merged_results([
            self.bounded(group, partial(self._aggregate, {k: etags.get(k, "") for k in group}))
            for group in bounded_groups(keys, lambda k: sizes.get(k, 0),
                                        self.settings.max_chunk_bytes)])
        failpoint("after_spark")
        return result

    def _keep(self, keys: list[str], result: BatchResult, summary: BatchSummary | None) -> None:
        if summary is not None and result.fetch_ms is not None:
            summary.fetch_ms = (summary.fetch_ms or 0) + round(result.fetch_ms)
        for key in keys:
            if key in self.hand.chunks:  # not forgotten meanwhile
                self.hand.aggregated[key] = result

    def overlap_next(self, applying: list[str], top_up: Callable[[], None]) -> None:
        """Start the Spark job of the chunks that come after ``applying``, on the Spark
        thread, so that it runs while ``applying`` is applied.

        A full batch means a backlog, where the batch being applied is usually all the worker
        holds: the next messages are received now (``top_up``), without waiting (at the
        nominal rate a batch holds one chunk and nothing is received here, which would only
        add latency). Chunks that failed before are left out: they go alone, in their turn,
        so that a failure stays theirs. At most two batches' results are held ahead.
        """
        s, hand = self.settings, self.hand
        if (not s.overlap_batches or self._overlapped is not None
                or len(hand.aggregated) >= 2 * s.max_batch_chunks):
            return
        if (len(applying) >= s.max_batch_chunks
                and len(hand.candidates(applying)) < s.max_batch_chunks):
            top_up()
        keys = hand.candidates(applying)[: s.max_batch_chunks]
        if keys:
            self._overlapped = Overlapped(keys, self._thread.submit(self.spark_job, keys))

    def collect_overlapped(self, summary: BatchSummary | None) -> None:
        """Wait for the overlapped job, if any, and keep its results; a failed job is dropped:
        its chunks are aggregated again in their turn, where a failure is theirs."""
        overlapped, self._overlapped = self._overlapped, None
        if overlapped is None:
            return
        try:
            outcome = overlapped.future.result()
        except Exception as exc:  # the job's error, whatever it is: not counted here
            self.raise_if_runtime_lost(exc)
            logger.info("overlapped Spark job failed: its chunks are aggregated in their turn",
                        extra={"chunk_keys": overlapped.keys, "error": failure_text(exc)})
            return
        if overlapped.keys:  # the start-up warm-up has none
            self._keep(overlapped.keys, outcome, summary)
            self.hand.ahead.update(key for key in overlapped.keys
                                   if key in self.hand.aggregated)

    def drop_overlapped(self) -> None:
        """Wait for a running overlapped job and drop what it produced (stopping, outage)."""
        overlapped, self._overlapped = self._overlapped, None
        if overlapped is not None:
            with contextlib.suppress(Exception):  # what it produced is dropped, errors too
                overlapped.future.result()

    def close(self) -> None:
        self.drop_overlapped()
        self._thread.shutdown(wait=True)
