"""The CustomerImportance key weights the worker detects with: read, computed, cached.

A key's weight is the mean Weight of its CustomerImportance rows (docs/detection-semantics.md).
Computing them means parsing the whole object: ~3 s and ~0.45 GB of driver memory for the
full 594,643-row file, measured, at every start. So the result is cached in PostgreSQL per
object version (its ETag, which S3 changes whenever the bytes change): the first worker to
see a version computes and stores it in one transaction, every later start reads ~42,000
rows back instead. The cache is an optimisation only: if it cannot be read or written, the
worker computes the weights from the object, as without it.
"""

from __future__ import annotations

import csv
import io
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

import psycopg2
import psycopg2.extensions
from botocore.exceptions import BotoCoreError, ClientError

from spark_detector import db
from spark_detector.chunk_aggregates import WeightKey, key_weights
from spark_detector.parsing import ReferenceRejected, RejectedRow, iter_customer_importance
from spark_detector.retry import backoff_delays
from spark_detector.s3_errors import ACCESS_DENIED_CODES, s3_outage_reason

logger = logging.getLogger(__name__)

KEEP_SETS = 3  # older versions' weights are deleted when a new version is stored


class ReferenceUnavailable(RuntimeError):
    """CustomerImportance could not be read before the worker was asked to stop."""


ACCESS_DENIED_HINT = (
    "access denied: check that the worker's role has s3:GetObject on the object and "
    "s3:ListBucket on the bucket (without ListBucket, S3 answers 403 for a missing key)")


def access_denied(exc: ClientError) -> bool:
    """S3 refused the caller (HEAD answers a bare 403, GET names AccessDenied)."""
    return str(exc.response.get("Error", {}).get("Code")) in ACCESS_DENIED_CODES


@dataclass(frozen=True)
class KeyWeights:
    """The weights of one CustomerImportance version, and where they came from."""

    weights: dict[WeightKey, Decimal]
    etag: str
    source: str
    cached: bool  # read from the cache rather than computed at this start
    rows_rejected: int = 0


class ReferenceSettings(Protocol):
    """Where CustomerImportance is and how large it may be (``config.WorkerSettings``)."""

    @property
    def bucket(self) -> str: ...
    @property
    def reference_key(self) -> str: ...
    @property
    def max_reference_bytes(self) -> int: ...


def _reference_head(s3, settings: ReferenceSettings, stop: threading.Event) -> dict:
    """HEAD of the CustomerImportance object, waiting for the producer to upload it if need be.

    The worker may start before the producer's first upload; it waits (backing off to 10 s
    between looks) rather than detect with no weights, which would fire wrong PatId1s. It
    waits the same way while S3 is out (``s3_errors.s3_outage_reason``), rather than exit and
    be restarted again and again. The size is checked here, so an oversized object is a clear
    error, not an out-of-memory kill.
    """
    where = f"s3://{settings.bucket}/{settings.reference_key}"
    attempt = 0
    while True:
        try:
            head = s3.head_object(Bucket=settings.bucket, Key=settings.reference_key)
            size = int(head["ContentLength"])
            check_reference_size(where, size, settings)
            return head
        except ClientError as exc:
            if access_denied(exc):
                raise ReferenceRejected(where, ACCESS_DENIED_HINT) from exc
            code = str(exc.response.get("Error", {}).get("Code"))
            outage = s3_outage_reason(exc)
            if code not in {"NoSuchKey", "404", "NotFound"} and outage is None:
                raise
        except BotoCoreError as exc:
            outage = s3_outage_reason(exc)
            if outage is None:
                raise
        delay = backoff_delays(attempt + 2, base=0.5, cap=10.0)[-1]
        attempt += 1
        if outage is not None:
            logger.warning("s3 unavailable at start-up: waiting for the reference data", extra={
                "bucket": settings.bucket, "key": settings.reference_key, "error": outage,
                "retry_in_s": delay})
        else:
            logger.warning("reference data not there yet; waiting", extra={
                "bucket": settings.bucket, "key": settings.reference_key, "retry_in_s": delay})
        if stop.wait(delay):
            raise ReferenceUnavailable(where)


def _get(s3, settings: ReferenceSettings, head: dict) -> bytes:
    where = f"s3://{settings.bucket}/{settings.reference_key}"
    try:
        # IfMatch: the bytes are those of the version whose ETag keys the cache
        return s3.get_object(Bucket=settings.bucket, Key=settings.reference_key,
                             IfMatch=head["ETag"])["Body"].read()
    except ClientError as exc:
        if access_denied(exc):
            raise ReferenceRejected(where, ACCESS_DENIED_HINT) from exc
        raise


def check_reference_size(where: str, size: int, settings: ReferenceSettings) -> None:
    """``ReferenceRejected`` for an object over ``WORKER_MAX_REFERENCE_BYTES``, known from its
    size before it is read, so that it is a clear error, not an out-of-memory kill."""
    if size > settings.max_reference_bytes:
        raise ReferenceRejected(where, f"too large: {size:,} bytes, the limit is "
                                f"{settings.max_reference_bytes:,} (WORKER_MAX_REFERENCE_BYTES)")


def compute_weights(data: bytes, source: str) -> tuple[dict[WeightKey, Decimal], int]:
    """The key weights of a CustomerImportance object and how many rows were skipped.

    Rows are parsed one at a time into the running sums: only the weights stay in memory.
    """
    rejected: list[RejectedRow] = []
    count = 0

    def rows() -> Iterator[tuple[WeightKey, Decimal]]:
        nonlocal count
        for item in iter_customer_importance(data, source):
            if isinstance(item, RejectedRow):
                count += 1
                if len(rejected) < 5:
                    rejected.append(item)
            else:
                yield item

    weights = key_weights(rows())
    if count:
        logger.warning("CustomerImportance rows rejected", extra={
            "source": source, "rows_rejected": count,
            "first_rejects": [(r.row, r.reason) for r in rejected]})
    return weights, count


# --- the cache in PostgreSQL --------------------------------------------------------------


def cached_weights(conn, etag: str) -> dict[WeightKey, Decimal] | None:
    """The stored weights of version ``etag``, or None when none are stored."""
    with db.transaction(conn), conn.cursor() as cur:
        cur.execute("SELECT keys FROM reference_weight_sets WHERE etag = %s", (etag,))
        found = cur.fetchone()
        if found is None:
            return None
        buffer = io.StringIO()
        # COPY out as CSV, parsed here: faster than fetching ~42,000 numeric rows
        cur.copy_expert(cur.mogrify(
            "COPY (SELECT customer, merchant, category, weight FROM reference_weights"
            " WHERE etag = %s) TO STDOUT WITH (FORMAT csv)", (etag,)).decode(), buffer)
    buffer.seek(0)
    weights = {(customer, merchant, category): Decimal(weight)
               for customer, merchant, category, weight in csv.reader(buffer)}
    if len(weights) != found[0]:  # written in one transaction: cannot happen unless edited
        raise RuntimeError(f"reference weights {etag}: {len(weights)} keys, {found[0]} expected")
    return weights


def store_weights(conn, etag: str, source: str, weights: dict[WeightKey, Decimal],
                  rows_rejected: int) -> bool:
    """Store version ``etag``'s weights, whole, unless stored already; True if stored here.

    Two workers computing the same version at once: the second one's insert waits for the
    first one's commit, then finds the set there and stores nothing.
    """
    with db.transaction(conn), conn.cursor() as cur:
        cur.execute(
            "INSERT INTO reference_weight_sets (etag, source, keys, rows_rejected)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (etag) DO NOTHING",
            (etag, source, len(weights), rows_rejected))
        if cur.rowcount == 0:
            return False
        buffer = io.StringIO()
        # every value quoted: COPY reads an unquoted empty CSV field as NULL, "" as ''
        writer = csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\n")
        writer.writerows((etag, *key, weight) for key, weight in weights.items())
        buffer.seek(0)
        cur.copy_expert("COPY reference_weights (etag, customer, merchant, category, weight)"
                        " FROM STDIN WITH (FORMAT csv)", buffer)
        cur.execute(
            "DELETE FROM reference_weight_sets WHERE etag NOT IN (SELECT etag FROM"
            " reference_weight_sets ORDER BY computed_at DESC LIMIT %s)", (KEEP_SETS,))
    return True


def load_key_weights(s3, connect: Callable[[], psycopg2.extensions.connection],
                     settings: ReferenceSettings,
                     stop: threading.Event) -> KeyWeights:
    """The weights of the current CustomerImportance version: from the cache, else computed
    from the object (and stored for the next start)."""
    head = _reference_head(s3, settings, stop)
    etag = head["ETag"].strip('"')
    source = f"s3://{settings.bucket}/{settings.reference_key}"
    conn: psycopg2.extensions.connection | None = None
    try:
        conn = connect()
        db.migrate(conn)
        weights = cached_weights(conn, etag)
        if weights is not None:
            return KeyWeights(weights, etag, source, cached=True)
    except psycopg2.Error as exc:
        logger.warning("reference weight cache unavailable: computing the weights",
                       extra={"error": str(exc).strip()})
    try:
        weights, rejected = compute_weights(_get(s3, settings, head), source)
        if conn is not None and not conn.closed:
            try:
                store_weights(conn, etag, source, weights, rejected)
            except psycopg2.Error as exc:
                logger.warning("reference weights not cached", extra={"error": str(exc).strip()})
        return KeyWeights(weights, etag, source, cached=False, rows_rejected=rejected)
    finally:
        if conn is not None:
            conn.close()
