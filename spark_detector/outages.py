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
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from spark_detector.emf import OUTAGE_METRICS, metric_directive
from spark_detector.failpoints import failpoint

logger = logging.getLogger(__name__)

S3, SPARK = "s3", "spark"

# Error codes S3 (or STS behind the credentials) answers when it cannot serve now, or when
# no request of this worker can succeed: none of them is about one chunk.
S3_OUTAGE_CODES = frozenset({
    "InternalError", "ServiceUnavailable", "SlowDown", "Throttling", "ThrottlingException",
    "RequestLimitExceeded", "RequestTimeout", "RequestTimeTooSkewed", "BandwidthLimitExceeded",
    "ExpiredToken", "ExpiredTokenException", "TokenRefreshRequired", "InvalidToken",
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket",
    "500", "502", "503", "504",
})
ACCESS_DENIED_CODES = frozenset({"AccessDenied", "403", "Forbidden"})
# Answers of a probe that show S3 serves this worker (the object went, or is empty)
S3_ANSWERED_CODES = frozenset({"NoSuchKey", "404", "InvalidRange", "PreconditionFailed"})
# The reason chunk_fetch gives a chunk S3 denied (batch_result's missing_chunks)
ACCESS_DENIED_REASON = "access denied"

_SPARK_TEXT = re.compile(r"\bS3UnavailableError: (.+)")


class S3UnavailableError(RuntimeError):
    """S3 cannot serve this worker now (see ``s3_outage_reason``): no chunk's fault. The
    name ends in "Error" so that ``worker.failure_text`` finds it in a Spark task's report."""


@dataclass(frozen=True)
class Outage:
    """A dependency is out: what failed, and for an operator, what to check."""

    dependency: str  # S3 or SPARK
    reason: str
    hint: str = ""


class DependencyOutage(RuntimeError):
    """Raised in the worker where a failure turns out to be a dependency's: stop intake."""

    def __init__(self, outage: Outage) -> None:
        super().__init__(f"{outage.dependency} unavailable: {outage.reason}")
        self.outage = outage


def error_code(exc: BaseException) -> str | None:
    """The error code of a botocore ``ClientError`` (None for anything else)."""
    if not isinstance(exc, ClientError):
        return None
    return str(exc.response.get("Error", {}).get("Code") or "") or None


def _http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def s3_error_reason(exc: BaseException) -> str | None:
    """Why ``exc`` itself (not its causes) is an S3 outage, or None."""
    if isinstance(exc, S3UnavailableError):
        return str(exc)
    if isinstance(exc, BotoConnectionError | HTTPClientError | IncompleteReadError
                  | NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ClientError):
        code = error_code(exc)
        status = _http_status(exc)
        if code in S3_OUTAGE_CODES or status >= 500 or status == 429:
            return f"{code or status}: {exc}"
        return None
    if isinstance(exc, BotoCoreError) and "Credential" in type(exc).__name__:
        return f"{type(exc).__name__}: {exc}"  # SSO/token refresh errors and the like
    return None


def s3_outage_reason(exc: BaseException) -> str | None:
    """Why ``exc`` is an S3 outage, or None: the error itself, what it was raised from, or
    the ``S3UnavailableError`` a Spark task reported (a task's error arrives as text)."""
    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            break
        reason = s3_error_reason(seen)
        if reason is not None:
            return reason
        seen = seen.__cause__ or seen.__context__
    matches = _SPARK_TEXT.findall(str(exc))
    return matches[-1].strip() if matches else None


def access_denied(reason: str) -> bool:
    """Whether a chunk's ``missing_chunks`` reason says S3 denied it (``chunk_fetch``)."""
    return reason.startswith(ACCESS_DENIED_REASON)


def s3_unavailable(exc: BaseException, bucket: str, key: str) -> S3UnavailableError:
    """The error ``chunk_fetch`` raises for an S3 outage met while reading ``key``."""
    return S3UnavailableError(
        f"s3://{bucket}/{key}: {s3_error_reason(exc) or type(exc).__name__}"[:1000])


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
