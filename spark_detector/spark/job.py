"""The worker's Spark side: a micro-batch of chunk keys in; per chunk out, its counts
(``ChunkAggregates``) and its pairs as COPY text (``BatchResult.prepared``).

``aggregate_batch`` runs ONE Spark query (one action) for the whole micro-batch, in three
parts, each in its own module:

1. ``fetch``: the chunks are fetched from S3 and checked whole, by the executors on a
   cluster, by the driver in local mode, which hands them to a query planned once
   (``driver_chunks``);
2. ``query``: the SQL that parses and validates every line and aggregates per
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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TypeVar

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from spark_detector.spark.batch_result import NO_WEIGHTS, BatchResult, assemble_batch
from spark_detector.spark.fetch import (
    FETCHED_SCHEMA,
    FetchSpec,
    fetch_chunks,
    fetch_on_driver,
    fetched_frame,
    s3_client,
    warm_up_partition,
    warm_up_rows,
)
from spark_detector.spark.query import aggregate_chunks
from spark_detector.spark.speedups.driver_chunks import DriverChunks

T = TypeVar("T")


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
        table = _warm_up_table(spark, fetch_spec, keys, lines)
        if len(keys) > 1:
            # one chunk alone, as at the nominal rate: its plan is another (no shuffle), whose
            # code the first real chunk would otherwise generate
            _warm_up_table(spark, fetch_spec, keys[:1], lines)
    return assemble_batch(keys, table, NO_WEIGHTS)


def _warm_up_table(spark: SparkSession, fetch_spec: FetchSpec, keys: list[str],
                   lines: int) -> pa.Table:
    """The batch query's result for made-up chunks that come the way real ones do."""
    if fetch_spec.on_driver:
        s3_client(fetch_spec)
        return _driver_table(spark, list(warm_up_rows(keys, lines)))
    rdd = spark.sparkContext.parallelize(keys, len(keys)).mapPartitions(
        functools.partial(warm_up_partition, fetch_spec, lines))
    fetched = spark.createDataFrame(rdd, FETCHED_SCHEMA, verifySchema=False)
    return batch_query_over(fetched, coalesce=len(keys) == 1).toArrow()


def batch_query_over(fetched: DataFrame, coalesce: bool) -> DataFrame:
    """The batch query over ``fetched``; ``coalesce``: in one partition, for one chunk.

    Its result is read with ``toArrow()``, not ``collect()``: a batch of 10 chunks returns
    ~40,000 pair rows, which ``collect()`` unpickles into Row objects at ~25 us each; Arrow
    columns convert in a few ms.
    """
    if coalesce:
        # one partition holds every row of the batch: the GROUP BY needs no shuffle, and the
        # job is one stage instead of two (~30 ms of a ~160 ms one-chunk job, measured)
        fetched = fetched.coalesce(1)
    return aggregate_chunks(fetched.sparkSession, fetched)


@functools.lru_cache(maxsize=1)
def driver_chunks(spark: SparkSession) -> DriverChunks | None:
    """The session's query planned once over chunks the driver hands in, where it can run:
    local mode, with the jar on the class path (``driver_chunks``); else None."""
    if not DriverChunks.available(spark):
        return None
    return DriverChunks(spark, lambda source, partitions: batch_query_over(source, partitions == 1))


def _driver_table(spark: SparkSession, rows: list[tuple]) -> pa.Table:
    """The batch query's result for ``FETCHED_SCHEMA`` rows the driver holds."""
    fed = driver_chunks(spark)
    if fed is not None:
        return fed.aggregate(rows)
    return batch_query_over(fetched_frame(spark, rows), coalesce=len(rows) == 1).toArrow()


def bounded_groups(items: Sequence[T], weigh: Callable[[T], int], limit: int) -> list[list[T]]:
    """``items`` in order, cut into groups that weigh ``limit`` at most in all (an item alone
    may weigh that much): a micro-batch cut into Spark jobs each at most one chunk at the
    limits, the memory the driver is sized for (docs/configuration.md, "Chunk limits and
    memory"). A batch of chunks of the producer's size is one group."""
    groups: list[list[T]] = []
    total = 0
    for item in items:
        weight = weigh(item)
        if not groups or total + weight > limit:
            groups.append([])
            total = 0
        groups[-1].append(item)
        total += weight
    return groups


def line_groups(rows: Sequence[tuple], max_lines: int) -> list[list[tuple]]:
    """``FETCHED_SCHEMA`` rows cut into jobs of at most ``max_lines`` data lines in all."""
    return bounded_groups(rows, lambda row: row[3], max_lines)  # n_lines


def aggregate_batch(
    spark: SparkSession, fetch_spec: FetchSpec, chunk_keys: Iterable[str], weights: pa.Table,
    etags: Mapping[str, str] | None = None,
) -> BatchResult:
    """Fetch, parse, validate and aggregate a micro-batch of chunks in one Spark query.
    ``weights``: the key weights as ``batch_result.weight_table`` gives them; ``etags``: the
    version to read of each key that has one (a key overwritten since is ``superseded``).

    A duplicated key is fetched once. Transient S3 errors are retried by botocore; when they
    persist, the Spark job fails and the whole batch may be retried by the caller.
    """
    keys = sorted(set(chunk_keys))
    if not keys:
        return BatchResult({}, {}, {}, {})
    if fetch_spec.on_driver:
        rows, fetch_ms = fetch_on_driver(fetch_spec, keys, etags)
        table = pa.concat_tables([_driver_table(spark, part)
                                  for part in line_groups(rows, fetch_spec.max_rows)])
    else:
        accumulator = spark.sparkContext.accumulator(0.0)
        fetched = fetch_chunks(spark, fetch_spec, keys, accumulator, etags)
        table = batch_query_over(fetched, coalesce=len(keys) == 1).toArrow()
        fetch_ms = accumulator.value
    return replace(assemble_batch(keys, table, weights), fetch_ms=fetch_ms)
