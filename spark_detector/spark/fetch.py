"""The first step of a batch: the chunks fetched from S3 and checked whole, one row per chunk.

Per chunk (not per row) it runs ``parsing.prepare_chunk``: decoding, line endings and the
header, i.e. the whole-chunk rejects of docs/detection-semantics.md ("Bad input"), with the
very same reasons as the pure-Python reference. What it yields per chunk is one
``FETCHED_SCHEMA`` row. Two places can do it (``FetchSpec.on_driver``):

- on a cluster, the executors (``fetch_chunks``): the chunk keys become a small RDD; each task
  builds (once per Python worker) a boto3 S3 client from the ``FetchSpec`` and fetches its
  chunks itself, so nothing relies on a path only the driver has;
- in local mode, the driver (``fetch_on_driver``): the executors ARE the driver's JVM, on the
  same machine, so the driver fetches with a few threads and hands the rows to the JVM
  itself (``driver_chunks``, else as Arrow: ``fetched_frame``). No Python worker process
  is started at all: ~300 MiB less in a backlog, and a one-chunk job no longer pickles its
  chunk through one (docs/performance.md).

This module, ``parsing`` and ``aggregates`` are what the executors import: they need boto3
and nothing else of the worker's dependencies (``infra/executor-requirements.txt``).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pyspark import Accumulator
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import IntegerType, StringType, StructField, StructType

from spark_detector.failpoints import failpoint
from spark_detector.parsing import ChunkRejected, prepare_chunk
from spark_detector.s3_errors import (
    ACCESS_DENIED_REASON,
    error_code,
    s3_outage_reason,
    s3_unavailable,
)

# What an executor emits per chunk: its status, and for a readable chunk its column layout
# and its data lines as one string (split in the JVM, which is cheaper than shipping rows).
# SUPERSEDED: the version the chunk's message named was overwritten before it was read.
OK, REJECTED, MISSING, SUPERSEDED = "ok", "rejected", "missing", "superseded"
FETCHED_SCHEMA = StructType([
    StructField("chunk_key", StringType(), False),
    StructField("status", StringType(), False),
    StructField("chunk_reason", StringType(), True),
    StructField("n_lines", IntegerType(), False),
    StructField("n_columns", IntegerType(), True),
    StructField("i_customer", IntegerType(), True),
    StructField("i_merchant", IntegerType(), True),
    StructField("i_category", IntegerType(), True),
    StructField("i_gender", IntegerType(), True),
    StructField("i_amount", IntegerType(), True),
    StructField("body", StringType(), True),
])


@dataclass(frozen=True)
class FetchSpec:
    """How executors reach the chunk objects. It is pickled into the Spark tasks.

    On a cluster, executors use their own AWS credentials (instance or pod role) and leave
    the credential fields empty. They are set only where the executors' environment cannot
    carry them, e.g. tests against a moto server started after the SparkSession.
    """

    bucket: str
    region: str = "us-east-1"
    endpoint_url: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    max_attempts: int = 5  # botocore "standard" retries: bounded exponential backoff
    # a chunk with more data lines is rejected whole, "too large" (the worker and the replay
    # set WORKER_MAX_CHUNK_ROWS here; config.DEFAULT_MAX_CHUNK_ROWS is its default)
    max_rows: int = 200_000
    on_driver: bool = False  # the driver fetches (Spark in local mode); else the executors

    @classmethod
    def from_env(cls, bucket: str, environ: Mapping[str, str] = os.environ) -> FetchSpec:
        """Region and endpoint as the driver's boto3 sees them (AWS_REGION; S3's own
        AWS_ENDPOINT_URL_S3 before AWS_ENDPOINT_URL, as boto3 reads them)."""
        return cls(
            bucket=bucket,
            region=environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            endpoint_url=(environ.get("AWS_ENDPOINT_URL_S3")
                          or environ.get("AWS_ENDPOINT_URL") or None),
        )


@functools.lru_cache(maxsize=4)
def s3_client(spec: FetchSpec) -> Any:
    """One client per Python worker process and spec (creating one costs ~50 ms)."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        region_name=spec.region,
        endpoint_url=spec.endpoint_url,
        aws_access_key_id=spec.access_key_id,
        aws_secret_access_key=spec.secret_access_key,
        config=Config(retries={"mode": "standard", "max_attempts": spec.max_attempts}),
    )


def fetch_chunk(s3: Any, bucket: str, key: str, max_rows: int = 200_000,
                etag: str = "") -> tuple:
    """One ``FETCHED_SCHEMA`` row: the chunk read and checked whole, or why it was not.

    ``etag``: the version the chunk's message names; the GET reads that one or none
    (If-Match), never what an overwrite put there after the message's event. Empty: the
    object as it is.

    An S3 outage (no answer, 5xx, throttling, credentials: ``s3_errors.s3_outage_reason``) is
    raised as ``S3UnavailableError``, which the worker does not charge to the chunk; an
    AccessDenied is the chunk's ``MISSING`` reason, which the worker checks against a probe
    (one object denied, or the role's permission gone: ``worker.outages.probe_s3``)."""
    pinned = {"IfMatch": f'"{etag}"'} if etag else {}
    try:
        failpoint("spark_fetch", key)
        data = s3.get_object(Bucket=bucket, Key=key, **pinned)["Body"].read()
    except ClientError as exc:
        code = error_code(exc)
        if code in ("NoSuchKey", "404"):
            return (key, MISSING, "object does not exist", 0, *([None] * 7))
        if code == "PreconditionFailed":
            return (key, SUPERSEDED, f"the object is no longer version {etag}: it was"
                    " overwritten after its event", 0, *([None] * 7))
        if code == "AccessDenied":
            # S3 answers 403, not 404, for a missing key when the caller may not list the
            # bucket
            return (key, MISSING, f"{ACCESS_DENIED_REASON}: the object is missing, or the"
                    " worker's role lacks s3:GetObject on it (and s3:ListBucket to be told it"
                    " is missing)", 0, *([None] * 7))
        if s3_outage_reason(exc) is not None:
            raise s3_unavailable(exc, bucket, key) from exc
        raise
    except BotoCoreError as exc:
        if s3_outage_reason(exc) is not None:
            raise s3_unavailable(exc, bucket, key) from exc
        raise
    try:
        chunk = prepare_chunk(key, data)
    except ChunkRejected as exc:
        return (key, REJECTED, exc.reason, 0, *([None] * 7))
    if chunk.n_lines > max_rows:
        return (key, REJECTED, f"too large: {chunk.n_lines:,} rows, the limit is {max_rows:,}",
                0, *([None] * 7))
    layout = chunk.layout
    return (key, OK, None, chunk.n_lines, layout.n_columns, layout.customer, layout.merchant,
            layout.category, layout.gender, layout.amount, chunk.body)


def _fetch_partition(
    spec: FetchSpec, fetch_ms: Accumulator | None, chunks: Iterable[tuple[str, str]]
) -> Iterator[tuple]:
    s3 = s3_client(spec)
    for key, etag in chunks:
        started = time.perf_counter()
        row = fetch_chunk(s3, spec.bucket, key, spec.max_rows, etag)
        if fetch_ms is not None:
            fetch_ms.add((time.perf_counter() - started) * 1000)
        yield row


def fetch_chunks(
    spark: SparkSession, spec: FetchSpec, chunk_keys: list[str],
    fetch_ms: Accumulator | None = None, etags: Mapping[str, str] | None = None,
) -> DataFrame:
    """A ``FETCHED_SCHEMA`` row per chunk, fetched by the executors, chunks spread over tasks.

    ``fetch_ms``, when given, receives the executors' S3 GET + ``prepare_chunk`` time;
    ``etags``: the version to read of each key that has one (``fetch_chunk``).
    """
    etags = etags or {}
    slices = max(1, min(len(chunk_keys), spark.sparkContext.defaultParallelism))
    rdd = spark.sparkContext.parallelize(
        [(key, etags.get(key, "")) for key in chunk_keys], slices).mapPartitions(
        functools.partial(_fetch_partition, spec, fetch_ms)
    )
    return spark.createDataFrame(rdd, FETCHED_SCHEMA, verifySchema=False)


# Parallel GETs on the driver: S3 answers each in tens of milliseconds, so a batch of 20
# chunks takes a few round trips, not 20.
DRIVER_FETCH_THREADS = 8


def fetched_frame(spark: SparkSession, rows: Sequence[tuple]) -> DataFrame:
    """``FETCHED_SCHEMA`` rows held by the driver, as a DataFrame spread over the cores.

    They reach the JVM as Arrow record batches (``createDataFrame`` of an Arrow table), which
    the JVM reads itself: unlike a list of tuples, which Spark unpickles in Python workers,
    no Python worker takes part. One record batch per chunk keeps each under Arrow's 2 GiB
    string limit whatever the batch size; Spark spreads the batches over its partitions.
    """
    import pyarrow as pa  # the driver's dependency, not the executors'
    from pyspark.sql.pandas.types import to_arrow_schema

    schema = to_arrow_schema(FETCHED_SCHEMA)
    batches = [
        pa.RecordBatch.from_arrays(
            [pa.array([value], type=column.type)
             for value, column in zip(row, schema, strict=True)],
            schema=schema)
        for row in rows
    ]
    return spark.createDataFrame(pa.Table.from_batches(batches, schema=schema), FETCHED_SCHEMA)


def fetch_on_driver(spec: FetchSpec, chunk_keys: Sequence[str],
                    etags: Mapping[str, str] | None = None) -> tuple[list[tuple], float]:
    """A ``FETCHED_SCHEMA`` row per chunk, fetched by the driver, in ``chunk_keys``' order
    (each key's version in ``etags``, if it has one); and the S3 GET + ``prepare_chunk`` time
    summed over the chunks (ms), as ``fetch_chunks`` reports it.

    A failing GET (after botocore's retries) or failpoint raises here, on the driver, and
    fails the batch exactly as a failed Spark task would.
    """
    s3 = s3_client(spec)
    etags = etags or {}
    spent: list[float] = []

    def fetch(key: str) -> tuple:
        started = time.perf_counter()
        row = fetch_chunk(s3, spec.bucket, key, spec.max_rows, etags.get(key, ""))
        spent.append((time.perf_counter() - started) * 1000)
        return row

    with ThreadPoolExecutor(min(len(chunk_keys), DRIVER_FETCH_THREADS) or 1,
                            thread_name_prefix="chunk-fetch") as pool:
        rows = list(pool.map(fetch, chunk_keys))
    return rows, sum(spent)


# The warm-up's made-up chunks (``spark.job.warm_up``) live here, not in spark.job: on a
# cluster the executors make them, and they import this module but lack spark_job's
# dependencies (pyarrow). tests/integration/test_worker_on_standalone_cluster.py checks that
# the warm-up runs there.


def warm_up_body(lines: int) -> str:
    """Data lines of a made-up chunk in the real files' layout: 97 customers x 13 merchants,
    both genders, weighted or not — enough variety for every operator of the query to run."""
    return "\n".join(
        f"0,'C{i % 97}','1','{'FM'[i % 2]}','28007','M{i % 13}','28007','es_food',"
        f"{i % 50 + 1}.{i % 100:02d},0"
        for i in range(lines)
    )


def warm_up_rows(keys: Iterable[str], lines: int) -> Iterator[tuple]:
    """A ``FETCHED_SCHEMA`` row per key: a good made-up chunk of ``lines`` lines."""
    body = warm_up_body(lines)
    for key in keys:
        yield (key, OK, None, lines, 10, 1, 5, 7, 3, 8, body)


def warm_up_partition(spec: FetchSpec, lines: int, keys: Iterable[str]) -> Iterator[tuple]:
    s3_client(spec)  # what the first real batch would pay: boto3's import, the client
    yield from warm_up_rows(keys, lines)
