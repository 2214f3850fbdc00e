"""The worker's Spark side: a micro-batch of chunk keys in; per chunk out, its counts
(``ChunkAggregates``) and its pairs as COPY text (``BatchResult.prepared``).

``aggregate_batch`` runs ONE Spark query (one action) for the whole micro-batch, in three
parts, each in its own module:

1. ``chunk_fetch``: the chunks are fetched from S3 and checked whole, by the executors on a
   cluster, by the driver in local mode;
2. ``batch_query``: the SQL that parses and validates every line and aggregates per
   (chunk, merchant, customer, category), rejected row and chunk;
3. ``batch_result``: the result, on the driver, weighed, merged per pair and written out as
   each chunk's counts and COPY text (Arrow compute).

This module holds the start-up ``warm_up`` and ``aggregate_batch`` itself. The key weights
(``reference_weights``) are applied on the driver, in step 3. The result equals
``build_aggregates(parse_chunk(...))`` chunk by chunk; the integration tests compare them
(the COPY text read back against the reference's pairs).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import replace

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from spark_detector.batch_query import aggregate_chunks
from spark_detector.batch_result import NO_WEIGHTS, BatchResult, assemble_batch
from spark_detector.chunk_fetch import (
    FETCHED_SCHEMA,
    OK,
    FetchSpec,
    fetch_chunks,
    fetch_on_driver,
    fetched_frame,
    s3_client,
)


def warm_up_body(lines: int) -> str:
    """Data lines of a made-up chunk in the real files' layout: 97 customers x 13 merchants,
    both genders, weighted or not — enough variety for every operator of the query to run."""
    return "\n".join(
        f"0,'C{i % 97}','1','{'FM'[i % 2]}','28007','M{i % 13}','28007','es_food',"
        f"{i % 50 + 1}.{i % 100:02d},0"
        for i in range(lines)
    )


def _warm_up_rows(keys: Iterable[str], lines: int) -> Iterator[tuple]:
    body = warm_up_body(lines)
    for key in keys:
        yield (key, OK, None, lines, 10, 1, 5, 7, 3, 8, body)


def _warm_up_partition(spec: FetchSpec, lines: int, keys: Iterable[str]) -> Iterator[tuple]:
    s3_client(spec)  # what the first real batch would pay: boto3's import, the client
    yield from _warm_up_rows(keys, lines)


def warm_up(spark: SparkSession, fetch_spec: FetchSpec, rounds: int = 1,
            lines: int = 10_000) -> BatchResult:
    """Run the batch query on made-up chunks (one per core), without touching S3.

    A fresh session's first batches cost seconds more than the later ones: the JVM loads the
    query's classes and compiles its hot loops only after many rows, and where the executors
    fetch, Spark's Python workers start and import boto3. Measured by ``make bench``: the
    first chunk at the nominal rate took 3.4 s instead of ~0.6 s and the queue backed up
    behind it (p99 3.8 s); the first backlog batch of 10 took 11.4 s instead of ~3.5 s. The
    worker pays it once, on its Spark thread while its first receive waits (``Worker.run``),
    so it delays neither start-up nor, unless a chunk is already waiting, any chunk.
    Chunk-sized made-up chunks (not a single line) warm the JIT up as real ones do. One round
    pays class loading, code generation and any Python workers' start; more rounds only heat
    the JIT further, which the first real chunks finish. The made-up chunks take the same
    path as real ones (``FetchSpec.on_driver``). Each round runs a batch of them and then one
    alone. Returns the last round's batch result (every made-up line a good row, none
    weighted), for tests.
    """
    keys = [f"warm-up-{i}" for i in range(max(1, spark.sparkContext.defaultParallelism))]
    table = None
    for _ in range(max(1, rounds)):
        table = _query_table(spark, _warm_up_frame(spark, fetch_spec, keys, lines), len(keys))
        if len(keys) > 1:
            # one chunk alone, as at the nominal rate: its plan is another (no shuffle), whose
            # code the first real chunk would otherwise generate
            _query_table(spark, _warm_up_frame(spark, fetch_spec, keys[:1], lines), 1)
    return assemble_batch(keys, table, NO_WEIGHTS)


def _warm_up_frame(spark: SparkSession, fetch_spec: FetchSpec, keys: list[str],
                   lines: int) -> DataFrame:
    """Made-up chunks as fetched ones, the way ``fetch_spec`` says real ones come."""
    if fetch_spec.on_driver:
        s3_client(fetch_spec)
        return fetched_frame(spark, list(_warm_up_rows(keys, lines)))
    rdd = spark.sparkContext.parallelize(keys, len(keys)).mapPartitions(
        functools.partial(_warm_up_partition, fetch_spec, lines))
    return spark.createDataFrame(rdd, FETCHED_SCHEMA, verifySchema=False)


def _query_table(spark: SparkSession, fetched: DataFrame, n_chunks: int) -> pa.Table:
    """The batch query's result for ``n_chunks`` fetched chunks, as an Arrow table."""
    if n_chunks == 1:
        # one partition holds every row of the batch: the GROUP BY needs no shuffle, and the
        # job is one stage instead of two (~30 ms of a ~160 ms one-chunk job, measured)
        fetched = fetched.coalesce(1)
    # Arrow, not collect(): a batch of 10 chunks returns ~40,000 pair rows, which collect()
    # unpickles into Row objects at ~25 us each; Arrow columns convert in a few ms.
    return aggregate_chunks(spark, fetched).toArrow()


def aggregate_batch(
    spark: SparkSession, fetch_spec: FetchSpec, chunk_keys: Iterable[str], weights: pa.Table,
) -> BatchResult:
    """Fetch, parse, validate and aggregate a micro-batch of chunks in one Spark query.
    ``weights``: the key weights as ``batch_result.weight_table`` gives them.

    A duplicated key is fetched once. Transient S3 errors are retried by botocore; when they
    persist, the Spark job fails and the whole batch may be retried by the caller.
    """
    keys = sorted(set(chunk_keys))
    if not keys:
        return BatchResult({}, {}, {}, {})
    if fetch_spec.on_driver:
        fetched, fetch_ms = fetch_on_driver(spark, fetch_spec, keys)
    else:
        accumulator = spark.sparkContext.accumulator(0.0)
        fetched = fetch_chunks(spark, fetch_spec, keys, accumulator)
    result = assemble_batch(keys, _query_table(spark, fetched, len(keys)), weights)
    return replace(result, fetch_ms=fetch_ms if fetch_spec.on_driver else accumulator.value)
