"""The Spark side of the worker: one micro-batch of chunks in, one ``ChunkAggregates`` per chunk out.

``aggregate_batch`` runs ONE Spark query (one ``collect``) for the whole micro-batch:

1. the chunk keys become a small RDD; each executor task builds (once per Python worker) a
   boto3 S3 client from the ``FetchSpec`` and fetches its chunks itself, so nothing relies on
   a path only the driver has. Per chunk (not per row) it runs ``parsing.prepare_chunk``:
   decoding, line endings and the header, i.e. the whole-chunk rejects of SPEC section 3,
   with the very same reasons as the pure-Python reference;
2. each chunk's data lines are exploded, split and validated with Spark expressions (no
   Python UDF): the row rules mirror ``parsing.parse_row`` reason for reason;
3. valid rows join the per-key weights (broadcast, left join on customer, merchant,
   category - one row per key, so the join never multiplies transactions);
4. one ``groupBy`` yields, per chunk, the (merchant, customer) aggregates, each rejected
   row with its reason, and a marker row for chunks without data lines or rejected whole.

The result equals ``build_aggregates(parse_chunk(...))`` chunk by chunk; the integration tests
compare them.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    DecimalType,
    IntegerType,
    StringType,
    StructField,
    StructType,
)

from spark_detector.aggregates import (
    ChunkAggregates,
    PairAggregate,
    WeightKey,
    key_weights,
)
from spark_detector.parsing import (
    DECIMAL_PATTERN,
    FIELD_WHITESPACE,
    NON_FINITE_PATTERN,
    ChunkRejected,
    RejectedRow,
    parse_customer_importance,
    prepare_chunk,
)

logger = logging.getLogger(__name__)

AMOUNT_TYPE = DecimalType(18, 2)
WEIGHT_TYPE = DecimalType(22, 10)  # the scale of the key weights (aggregates.KEY_WEIGHT_PLACES)

WEIGHTS_SCHEMA = StructType([
    StructField("customer", StringType(), False),
    StructField("merchant", StringType(), False),
    StructField("category", StringType(), False),
    StructField("weight", WEIGHT_TYPE, False),
])

# What an executor emits per chunk: its status, and for a readable chunk its column layout
# and its data lines as one string (split in the JVM, which is cheaper than shipping rows).
OK, REJECTED, MISSING = "ok", "rejected", "missing"
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

PAIR, REJECTED_ROW, CHUNK = "pair", "rejected_row", "chunk"


class BatchIntegrityError(RuntimeError):
    """The Spark result does not account for every line of a chunk: a bug, never bad input."""


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

    @classmethod
    def from_env(cls, bucket: str, environ: Mapping[str, str] = os.environ) -> FetchSpec:
        """Region and endpoint as the driver's boto3 sees them (AWS_REGION, AWS_ENDPOINT_URL)."""
        return cls(
            bucket=bucket,
            region=environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            endpoint_url=environ.get("AWS_ENDPOINT_URL") or None,
        )


@dataclass(frozen=True)
class BatchResult:
    """What one micro-batch produced; every requested chunk is in exactly one of the fields.

    - ``aggregates``: chunks that were read; their ``rows_rejected`` counts ``rejected_rows``;
    - ``rejected_rows``: per read chunk, its rejected rows with reasons (empty tuple if none);
    - ``rejected_chunks``: chunks rejected whole (SPEC section 3), with the reason;
    - ``missing_chunks``: keys with no object behind them (a poison message, not a bad chunk).
    """

    aggregates: dict[str, ChunkAggregates]
    rejected_rows: dict[str, tuple[RejectedRow, ...]]
    rejected_chunks: dict[str, str]
    missing_chunks: tuple[str, ...]


def build_spark(
    master: str = "local[2]", app_name: str = "spark_detector", shuffle_partitions: int = 2
) -> SparkSession:
    """The worker's SparkSession, tuned for small micro-batches (10,000-row chunks)."""
    return (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        # A batch is at most a few hundred thousand rows: a handful of partitions is plenty,
        # and each extra task costs more than it saves.
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.python.worker.reuse", "true")  # keeps the S3 client between batches
        .getOrCreate()
    )


def load_weights(
    spark: SparkSession, source: bytes | Iterable[tuple[WeightKey, Decimal]]
) -> DataFrame:
    """One row per (customer, merchant, category) with its exact mean weight, cached.

    ``source`` is the CustomerImportance object's bytes, or its rows already parsed. The
    means are computed on the driver by ``aggregates.key_weights`` itself, not by Spark's
    ``avg``: for a decimal(18,6) column Spark divides at scale 16 and then casts to scale 10,
    rounding twice, which differs from the exact mean rounded once (see the integration test
    ``test_spark_avg_would_round_twice``). The file is read once at start-up, so doing it on
    the driver costs about a second for the full data set and is exact by construction.
    """
    if isinstance(source, bytes | bytearray):
        parsed = parse_customer_importance(bytes(source))
        if parsed.rejected:
            logger.warning(
                "CustomerImportance rows rejected",
                extra={
                    "rows_rejected": len(parsed.rejected),
                    "first_rejects": [(r.row, r.reason) for r in parsed.rejected[:5]],
                },
            )
        rows: Iterable[tuple[WeightKey, Decimal]] = parsed.rows
    else:
        rows = source
    weights = key_weights(rows)
    data = [(c, m, k, w) for (c, m, k), w in sorted(weights.items())]
    frame = spark.createDataFrame(data, WEIGHTS_SCHEMA).cache()
    frame.count()  # materialise now, so that every batch reads it from memory
    return frame


@functools.lru_cache(maxsize=4)
def _s3_client(spec: FetchSpec) -> Any:
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


def fetch_chunk(s3: Any, bucket: str, key: str) -> tuple:
    """One ``FETCHED_SCHEMA`` row: the chunk read and checked whole, or why it was not."""
    try:
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return (key, MISSING, "object does not exist", 0, *([None] * 7))
    try:
        chunk = prepare_chunk(key, data)
    except ChunkRejected as exc:
        return (key, REJECTED, exc.reason, 0, *([None] * 7))
    layout = chunk.layout
    return (key, OK, None, chunk.n_lines, layout.n_columns, layout.customer, layout.merchant,
            layout.category, layout.gender, layout.amount, chunk.body)


def _fetch_partition(spec: FetchSpec, keys: Iterable[str]) -> Iterator[tuple]:
    s3 = _s3_client(spec)
    for key in keys:
        yield fetch_chunk(s3, spec.bucket, key)


def fetch_chunks(spark: SparkSession, spec: FetchSpec, chunk_keys: list[str]) -> DataFrame:
    """A ``FETCHED_SCHEMA`` row per chunk, fetched by the executors, chunks spread over tasks."""
    slices = max(1, min(len(chunk_keys), spark.sparkContext.defaultParallelism))
    rdd = spark.sparkContext.parallelize(chunk_keys, slices).mapPartitions(
        functools.partial(_fetch_partition, spec)
    )
    return spark.createDataFrame(rdd, FETCHED_SCHEMA, verifySchema=False)


def _clean(value: Column) -> Column:
    """``parsing.clean_field``: strip spaces and tabs, then one pair of single quotes."""
    trimmed = F.btrim(value, F.lit(FIELD_WHITESPACE))
    quoted = (F.length(trimmed) >= 2) & trimmed.startswith("'") & trimmed.endswith("'")
    return F.when(quoted, trimmed.substr(F.lit(2), F.length(trimmed) - 2)).otherwise(trimmed)


def _field(fields: Column, index: str) -> Column:
    return _clean(F.try_element_at(fields, F.col(index) + 1))


def _whole(pattern: str) -> str:
    """A fullmatch pattern for Java's regex; \\z, as $ also matches before a final "\\r"."""
    flags = "(?i)" if pattern.startswith("(?i)") else ""
    return f"{flags}^(?:{pattern.removeprefix('(?i)')})\\z"


def parse_lines(fetched: DataFrame) -> DataFrame:
    """One row per data line (or one marker row per chunk without lines), parsed and checked.

    ``reason`` is null for a valid row; otherwise it is the reason ``parsing.parse_row`` gives.
    """
    lines = fetched.select(
        "*", F.posexplode_outer(F.split("body", "\n", -1)).alias("pos", "line")
    ).drop("body")
    fields = F.split("line", ",", -1)
    parsed = lines.select(
        "chunk_key", "status", "chunk_reason", "n_lines", "n_columns", "line",
        (F.col("pos") + 1).alias("row"),
        F.size(fields).alias("n_fields"),
        _field(fields, "i_customer").alias("customer"),
        _field(fields, "i_merchant").alias("merchant"),
        _field(fields, "i_category").alias("category"),
        _field(fields, "i_gender").alias("gender"),
        _field(fields, "i_amount").alias("amount_text"),
    )  # fmt: skip
    text = F.col("amount_text")
    amount = text.try_cast(AMOUNT_TYPE)  # rounds half-up; null when it overflows the type
    not_a_number = F.when(
        text.rlike(_whole(NON_FINITE_PATTERN)),
        F.concat(F.lit("amount '"), text, F.lit("' is not a finite number")),
    ).otherwise(F.concat(F.lit("amount '"), text, F.lit("' is not a decimal number")))
    reason = (
        F.when(F.col("line") == "", F.lit("empty line"))
        .when(
            F.col("n_fields") != F.col("n_columns"),
            F.format_string("expected %d fields, got %d", "n_columns", "n_fields"),
        )
        .when(F.col("customer") == "", F.lit("empty customer"))
        .when(F.col("merchant") == "", F.lit("empty merchant"))
        .when(text == "", F.lit("empty amount"))
        .when(~text.rlike(_whole(DECIMAL_PATTERN)), not_a_number)
        # a minus sign before a non-zero digit: "-0.00" is zero, "-0.001" is negative
        .when(text.rlike("^-[0-9.]*[1-9]"), F.concat(F.lit("amount "), text, F.lit(" is negative")))
        .when(
            amount.isNull(),
            F.concat(F.lit("amount "), text, F.lit(" is too large for decimal(18,2)")),
        )
    )
    return parsed.select(
        "chunk_key", "status", "chunk_reason", "n_lines", "row", "line",
        reason.alias("reason"),
        "customer", "merchant", "category", "gender",
        amount.alias("amount"),
    )  # fmt: skip


def aggregate_lines(parsed: DataFrame, weights: DataFrame) -> DataFrame:
    """Per chunk: one row per (merchant, customer) pair, per rejected row, and a marker row.

    Rejected rows and markers go through the same ``groupBy`` as the pairs (each rejected row
    is its own group) so that the whole batch is one query with one shuffle: a second query
    for the rejects would fetch and parse every chunk again.
    """
    kind = (
        F.when(F.col("line").isNull(), F.lit(CHUNK))
        .when(F.col("reason").isNotNull(), F.lit(REJECTED_ROW))
        .otherwise(F.lit(PAIR))
    )
    is_pair = F.col("kind") == PAIR
    rows = parsed.withColumn("kind", kind).select(
        "chunk_key", "kind", "status", "chunk_reason", "n_lines", "gender", "amount",
        "category", "line", "reason",
        # only valid rows have a pair and a weight; a rejected row is keyed by its number
        F.when(is_pair, F.col("customer")).alias("customer"),
        F.when(is_pair, F.col("merchant")).alias("merchant"),
        F.when(F.col("kind") == REJECTED_ROW, F.col("row")).alias("reject_row"),
        "row",
    )  # fmt: skip
    weighted = rows.join(
        F.broadcast(weights), on=["customer", "merchant", "category"], how="left"
    )
    return weighted.groupBy("chunk_key", "kind", "merchant", "customer", "reject_row").agg(
        F.max("status").alias("status"),
        F.max("chunk_reason").alias("chunk_reason"),
        F.max("n_lines").alias("n_lines"),
        F.count(F.lit(1)).alias("txn_count"),
        F.sum("amount").alias("amount_sum"),
        F.sum("weight").alias("weight_sum"),
        F.count("weight").alias("weighted_count"),
        F.min_by("gender", "row").alias("first_gender"),
        F.max("reason").alias("reason"),
        F.max("line").alias("line"),
    ).select(
        "chunk_key", "kind", "status", "chunk_reason", "n_lines",
        "merchant", "customer", "txn_count", "amount_sum", "weight_sum", "weighted_count",
        "first_gender", "reject_row", "reason", "line",
    )  # fmt: skip


def aggregate_batch(
    spark: SparkSession, fetch_spec: FetchSpec, chunk_keys: Iterable[str], weights_df: DataFrame
) -> BatchResult:
    """Fetch, parse, validate and aggregate a micro-batch of chunks in one Spark query.

    A duplicated key is fetched once. Transient S3 errors are retried by botocore; when they
    persist, the Spark job fails and the whole batch may be retried by the caller.
    """
    keys = sorted(set(chunk_keys))
    if not keys:
        return BatchResult({}, {}, {}, ())
    parsed = parse_lines(fetch_chunks(spark, fetch_spec, keys))
    return assemble_batch(keys, aggregate_lines(parsed, weights_df).collect())


def assemble_batch(keys: list[str], rows: Iterable[Any]) -> BatchResult:
    """The collected ``aggregate_lines`` rows as a ``BatchResult``, every line accounted for."""
    status: dict[str, tuple[str, str | None, int]] = {}
    pairs: dict[str, list[PairAggregate]] = {}
    rejects: dict[str, list[RejectedRow]] = {}
    for r in rows:
        status[r.chunk_key] = (r.status, r.chunk_reason, r.n_lines)
        if r.kind == PAIR:
            pairs.setdefault(r.chunk_key, []).append(PairAggregate(
                merchant=r.merchant,
                customer=r.customer,
                txn_count=r.txn_count,
                amount_sum=r.amount_sum,
                weight_sum=r.weight_sum if r.weight_sum is not None else Decimal(0),
                weighted_count=r.weighted_count,
                first_gender=r.first_gender,
            ))
        elif r.kind == REJECTED_ROW:
            rejects.setdefault(r.chunk_key, []).append(RejectedRow(r.reject_row, r.reason, r.line))

    aggregates: dict[str, ChunkAggregates] = {}
    rejected_rows: dict[str, tuple[RejectedRow, ...]] = {}
    rejected_chunks: dict[str, str] = {}
    missing: list[str] = []
    for key in keys:
        if key not in status:
            raise BatchIntegrityError(f"{key}: no result from the Spark job")
        state, reason, n_lines = status[key]
        if state == MISSING:
            missing.append(key)
            continue
        if state == REJECTED:
            rejected_chunks[key] = reason or ""
            continue
        chunk_pairs = tuple(sorted(pairs.get(key, ()), key=lambda p: (p.merchant, p.customer)))
        chunk_rejects = tuple(sorted(rejects.get(key, ()), key=lambda r: r.row))
        rows_good = sum(p.txn_count for p in chunk_pairs)
        if rows_good + len(chunk_rejects) != n_lines:
            raise BatchIntegrityError(
                f"{key}: {rows_good} good + {len(chunk_rejects)} rejected rows != {n_lines} lines"
            )
        aggregates[key] = ChunkAggregates(key, rows_good, len(chunk_rejects), chunk_pairs)
        rejected_rows[key] = chunk_rejects
    return BatchResult(aggregates, rejected_rows, rejected_chunks, tuple(missing))
