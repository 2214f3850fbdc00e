"""What an S3 error means for the worker: an outage of S3 (no answer, 5xx, throttling,
credentials: no chunk's fault), a denial, or the chunk's own answer (docs/worker.md,
"Outages"). Pure functions of botocore's errors, used where S3 is read: the Spark fetch
(``spark.fetch``) raises an outage as ``S3UnavailableError``, which survives as text in a
Spark task's report; the worker (``worker.outages``) probes and waits it out.
"""

from __future__ import annotations

import re

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
    """S3 cannot serve this worker now (see ``s3_outage_reason``): no chunk's fault. The name
    ends in "Error" so that ``engine.failures.failure_text`` finds it in a Spark task's
    report."""


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
    """Whether a chunk's ``missing_chunks`` reason says S3 denied it (``spark.fetch``)."""
    return reason.startswith(ACCESS_DENIED_REASON)


def s3_unavailable(exc: BaseException, bucket: str, key: str) -> S3UnavailableError:
    """The error ``spark.fetch`` raises for an S3 outage met while reading ``key``."""
    return S3UnavailableError(
        f"s3://{bucket}/{key}: {s3_error_reason(exc) or type(exc).__name__}"[:1000])
