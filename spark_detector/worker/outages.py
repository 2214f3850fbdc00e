"""Outages of S3 and of the Spark runtime: told apart from a chunk's own failure, and waited out.

SPEC 6a: throttling, 5xx, network errors, expired credentials, or a Spark job that fails for
every chunk alike are an outage of the dependency, not a failure of the chunk at the head of
the stream. Charging them to that chunk would dead-letter one chunk after the other for as
long as the outage lasts (a 10-minute S3 outage, ~6 chunks), and redriven later, those are
applied late: the detections change. So the worker, like for a PostgreSQL outage, stops
intake instead: it keeps the chunks it holds (the heartbeat keeps their messages hidden;
nothing is received, so no receive count grows), probes the dependency with bounded
exponential backoff, and retries the held chunks when it answers. Nothing is counted
against a chunk.

What is an outage (pure functions, unit-tested):

- S3 (``s3_outage_reason``): no connection, a timeout, a reset, no or expired credentials,
  a 5xx or a throttling answer, a bucket that does not exist. ``chunk_fetch`` raises these
  as ``S3UnavailableError``, so that they are recognised in a Spark task's error text too.
- S3's AccessDenied on a chunk may be that object's alone (a KMS key, an object ACL) or the
  role's (a bad IAM deploy: every object denied). The worker asks ``probe_s3``: a listing of
  the chunk prefix and a one-byte read of another chunk. Denied too: an outage, whose log
  line names the missing permission; served: the chunk's own failure, counted as before.
- A missing object (NoSuchKey) or an overwritten version (PreconditionFailed) is the chunk's.
- Spark: a failed job of one chunk is the chunk's only if a made-up batch (the warm-up's
  chunks, no S3) still runs; if that fails too, the runtime is sick: an outage. A runtime
  that is gone, or a job that overran, still ends the process (exit code 3).

The gate's probe may answer while the work still fails (a fault in front of GetObject only):
each such round is a new episode with a longer wait (``OutageGate``), never a failure; the
waits start again from the shortest once a chunk is settled.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from spark_detector.config import WorkerSettings
from spark_detector.engine.failures import failure_text
from spark_detector.failpoints import failpoint
from spark_detector.s3_errors import (
    ACCESS_DENIED_CODES,
    S3_ANSWERED_CODES,
    access_denied,
    error_code,
    s3_outage_reason,
)
from spark_detector.worker.emf import OUTAGE_METRICS, metric_directive
from spark_detector.worker.errors import (
    S3,
    SPARK,
    ChunkUnavailable,
    DependencyOutage,
    Outage,
)
from spark_detector.worker.hand import Hand
from spark_detector.worker.spark_jobs import SparkJobs

logger = logging.getLogger(__name__)

def probe_s3(s3, bucket: str, prefix: str, avoid: Iterable[str] = ()) -> Outage | None:
    """Whether S3 serves this worker: a listing of the chunk prefix (s3:ListBucket) and a
    one-byte read of one chunk in it, not one of ``avoid`` (s3:GetObject, and kms:Decrypt
    for an encrypted bucket). None when it does (or when there is nothing else to read);
    else the outage, naming the permission that is missing when S3 denied it."""
    avoid = set(avoid)
    try:
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=len(avoid) + 5)
    except Exception as exc:
        return _probe_failure(exc, "s3:ListBucket", f"arn:aws:s3:::{bucket}")
    readable = [o["Key"] for o in listed.get("Contents", [])
                if o["Key"] not in avoid and o.get("Size", 0) > 0]
    if not readable:
        return None
    try:
        failpoint("s3_probe", readable[0])
        s3.get_object(Bucket=bucket, Key=readable[0], Range="bytes=0-0")["Body"].read()
    except Exception as exc:
        return _probe_failure(exc, "s3:GetObject", f"arn:aws:s3:::{bucket}/{prefix}*")
    return None


def _probe_failure(exc: BaseException, action: str, resource: str) -> Outage | None:
    code = error_code(exc)
    if code in S3_ANSWERED_CODES:
        return None
    if code in ACCESS_DENIED_CODES:
        return Outage(S3, f"{action} denied on {resource}",
                      hint=f"the worker's role needs {action} on {resource} (and kms:Decrypt"
                           " on the bucket's key, if it has one): check the last IAM change")
    reason = s3_outage_reason(exc)
    if reason is None:  # no S3 answer we know: say what it was, and treat it as an outage
        reason = f"{type(exc).__name__}: {exc}"
    return Outage(S3, reason[:1000], hint="S3 does not answer: network, endpoint, credentials")


# The gate's waits between probes: 0.5 s doubling to at most 30 s (the database's are the
# same shape); a round that fails again after a probe answered waits longer.
GATE_BASE_SECONDS = 0.5
GATE_CAP_SECONDS = 30.0


def gate_delay(round_no: int, base: float = GATE_BASE_SECONDS, cap: float = GATE_CAP_SECONDS
               ) -> float:
    """The wait before probe ``round_no`` (1-based, counted over the outage's episodes)."""
    return min(cap, base * 2 ** (max(1, round_no) - 1))


class OutageGate:
    """Intake stopped while S3 or the Spark runtime is out: ``trip`` when a failure turns out
    to be an outage, ``wait`` until a probe answers, ``settled`` once work succeeds again.

    The rounds count over the outage's episodes (a probe that answers while the work still
    fails starts another episode), so the waits grow until a chunk is settled; that resets
    them and logs the outage's end."""

    def __init__(self, stop: threading.Event, namespace: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stop = stop
        self._namespace = namespace
        self._clock = clock
        self.down: Outage | None = None
        self._since: float | None = None  # the outage's start (monotonic); None: no outage
        self._rounds = 0
        self.episodes = 0

    def trip(self, outage: Outage, chunk_keys: list[str]) -> None:
        """Intake stops: the held chunks wait, nothing is received, nothing is counted."""
        self.down = outage
        self.episodes += 1
        if self._since is None:
            self._since = self._clock()
        fields = {"dependency": outage.dependency, "error": outage.reason, "hint": outage.hint,
                  "episode": self.episodes, "outage_s": self._lasted(),
                  "chunks_held": len(chunk_keys), "chunk_keys": chunk_keys[:20]}
        logger.error(f"{outage.dependency} unavailable: holding the chunks, receiving nothing"
                     " until it answers", extra={**fields, **metric_directive(
                         self._namespace, fields, OUTAGE_METRICS)})

    def wait(self, probe: Callable[[], Outage | None]) -> None:
        """Block, with bounded exponential backoff, until ``probe`` finds the dependency
        answering (or a stop is asked); the held chunks are then retried."""
        outage = self.down
        if outage is None:
            return
        while not self._stop.is_set():
            self._rounds += 1
            delay = gate_delay(self._rounds)
            if self._stop.wait(delay):
                return
            found = probe()
            if found is None:
                break
            fields = {"dependency": outage.dependency, "error": found.reason,
                      "hint": found.hint, "round": self._rounds,
                      "retry_in_s": gate_delay(self._rounds + 1), "outage_s": self._lasted()}
            logger.warning(f"{outage.dependency} still unavailable: receiving nothing", extra={
                **fields, **metric_directive(self._namespace, fields, OUTAGE_METRICS)})
        if not self._stop.is_set():
            self.down = None
            logger.info(f"{outage.dependency} answers: retrying the held chunks", extra={
                "dependency": outage.dependency, "round": self._rounds})

    def _lasted(self) -> float:
        return 0.0 if self._since is None else round(self._clock() - self._since, 1)

    def settled(self) -> None:
        """Work succeeded: an outage, if there was one, is over."""
        if self._since is None:
            return
        logger.info("dependency outage over: resuming", extra={
            "outage_s": self._lasted(), "episodes": self.episodes})
        self._since = None
        self._rounds = 0
        self.episodes = 0


class DependencyChecks:
    """Whether a failure is the chunk's own or an outage of S3 or of the Spark runtime
    (``DependencyOutage``): the probes, and the chunks that failed once while the dependency
    answered (``hand.confirming``: their next failure is theirs)."""

    def __init__(self, settings: WorkerSettings, s3, hand: Hand, jobs: SparkJobs,
                 probe_spark: Callable[[], object] | None, *, probe_client: Any = None) -> None:
        self.settings = settings
        self.s3 = s3
        # the probes' client: one attempt, short timeouts (__main__.PROBE_CONFIG), so that a
        # probe in a hard outage answers in seconds; the chunk's own calls keep their retries
        self.probe_client = probe_client if probe_client is not None else s3
        self.hand = hand
        self.jobs = jobs
        self._probe_spark = probe_spark  # a made-up batch, no S3: None, no Spark probe

    def raise_if_s3_outage(self, exc: BaseException) -> None:
        reason = s3_outage_reason(exc)
        if reason is not None:
            raise DependencyOutage(Outage(S3, reason)) from exc

    def own_failure(self, exc: BaseException, key: str, spark: bool = False) -> bool:
        """Whether ``exc`` is ``key``'s own failure, to be counted; ``DependencyOutage`` when
        it is an outage of S3 or of the Spark runtime. An AccessDenied, or a failed Spark job
        (``spark``), is the chunk's only if a probe finds the dependency serving other work
        and the chunk fails again after that probe: the first time it is tried again
        uncounted, so that a fault that ended meanwhile is charged to nobody."""
        self.raise_if_s3_outage(exc)
        s = self.settings
        if isinstance(exc, ChunkUnavailable) and access_denied(str(exc)):
            outage = probe_s3(self.probe_client, s.bucket, s.chunk_prefix, avoid=[key])
        elif spark and self._probe_spark is not None:
            outage = self.spark_outage()
        else:
            return True
        confirming = self.hand.confirming
        if outage is not None:
            confirming.discard(key)
            raise DependencyOutage(outage) from exc
        if key in confirming:
            confirming.discard(key)
            return True
        confirming.add(key)
        logger.info("chunk failed while its dependency answers: tried again before it is"
                    " counted", extra={"chunk_key": key, "error": failure_text(exc)})
        return False

    def spark_outage(self) -> Outage | None:
        """None if a made-up batch (no S3) runs, else why not."""
        if self._probe_spark is None:
            return None
        try:
            self.jobs.bounded([], self._probe_spark)
        except Exception as exc:  # whatever the made-up batch met: the runtime's state
            self.jobs.raise_if_runtime_lost(exc)
            return Outage(SPARK, failure_text(exc), hint="a made-up batch fails too: every"
                          " Spark job fails alike; see the driver's log")
        return None

    def probe(self, down: Outage | None) -> Outage | None:
        """The gate's probe of the dependency that is out: None once it answers."""
        if down is not None and down.dependency == SPARK:
            return self.spark_outage()
        s = self.settings
        return probe_s3(self.probe_client, s.bucket, s.chunk_prefix)
