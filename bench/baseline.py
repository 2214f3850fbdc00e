"""The approach most public solutions take, for comparison: after each new chunk, recompute the
three rules from ALL rows seen so far with Spark.

It is written as such a solution would be (plain DataFrame code), with two favours to it:
the CustomerImportance means are computed once and cached (a typical solution re-reads the
file per chunk), and percentiles are Spark's exact ``percentile`` (same definition as the
rules') rather than ``percentile_approx``. Emit-once is a set of keys on the driver. Its
detections are returned (key and the chunk after which each fired) so a test can show it
computes the same thing as the worker's rules.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_detector.engine.rules import Thresholds


def unquote(column: str) -> F.Column:
    return F.regexp_replace(F.trim(F.col(column)), "^'|'$", "")


def load_weights(spark: SparkSession, importance: Path) -> DataFrame:
    raw = spark.read.csv(str(importance), header=True, inferSchema=False)
    return (
        raw.select(unquote("Source").alias("customer"), unquote("Target").alias("merchant"),
                   unquote("typeTrans").alias("category"),
                   F.col("Weight").cast("double").alias("weight"))
        .groupBy("customer", "merchant", "category")
        .agg(F.avg("weight").alias("weight"))
        .cache()
    )


def detections(spark: SparkSession, chunk_paths: Sequence[str], weights: DataFrame,
               thresholds: Thresholds) -> tuple[DataFrame, DataFrame]:
    """The three rules over every row of ``chunk_paths``: (pattern_id, merchant, customer),
    and the cached pair aggregates they read (for the caller to unpersist)."""
    rows = spark.read.csv(list(chunk_paths), header=True, inferSchema=False)
    txns = rows.select(
        unquote("customer").alias("customer"), unquote("merchant").alias("merchant"),
        unquote("category").alias("category"), unquote("gender").alias("gender"),
        F.col("amount").cast("decimal(18,2)").alias("amount"),
    ).where(F.col("amount").isNotNull())
    weighted = txns.join(F.broadcast(weights), on=["customer", "merchant", "category"],
                         how="left")
    pairs = weighted.groupBy("merchant", "customer").agg(
        F.count(F.lit(1)).alias("txn_count"),
        F.sum("amount").alias("amount_sum"),
        F.avg("weight").alias("avg_weight"),
        F.first("gender").alias("gender"),
    ).cache()
    merchants = pairs.groupBy("merchant").agg(
        F.sum("txn_count").alias("total"),
        F.percentile(F.col("txn_count"), F.lit(float(thresholds.upgrade_count_percentile)))
        .alias("p90_count"),
        F.percentile(F.col("avg_weight"), F.lit(float(thresholds.upgrade_weight_percentile)))
        .alias("p10_weight"),
        F.count_if(F.col("gender") == "F").alias("female"),
        F.count_if(F.col("gender") == "M").alias("male"),
    )
    upgrade = (
        pairs.join(merchants, on="merchant", how="inner")
        .where((F.col("total") > thresholds.upgrade_min_total)
               & (F.col("txn_count") >= F.col("p90_count"))
               & (F.col("avg_weight") <= F.col("p10_weight")))
        .select(F.lit("PatId1").alias("pattern_id"), "merchant", "customer")
    )
    child = (
        pairs.where((F.col("txn_count") >= thresholds.child_min_count)
                    & (F.col("amount_sum")
                       < F.lit(thresholds.child_max_avg_amount) * F.col("txn_count")))
        .select(F.lit("PatId2").alias("pattern_id"), "merchant", "customer")
    )
    dei = (
        merchants.where((F.col("female") > thresholds.dei_min_female)
                        & (F.col("female") < F.col("male")))
        .select(F.lit("PatId3").alias("pattern_id"), "merchant", F.lit("").alias("customer"))
    )
    return upgrade.unionByName(child).unionByName(dei), pairs


def run_baseline(spark: SparkSession, chunk_paths: Sequence[Path], importance: Path,
                 thresholds: Thresholds, last_repeats: int = 3) -> dict:
    """Recompute after each chunk; the wall time of each recompute (ms) and the detections:
    ``fired`` maps each (pattern_id, merchant, customer) to the name of the chunk file after
    which it first held.

    The recompute after the last chunk runs ``last_repeats`` times in all (the same work
    each time, emitting nothing new): one recompute's time swings by +-15% from chunk to
    chunk, and the figure compares that one chunk (``last_chunk_ms``: their median).
    """
    weights = load_weights(spark, importance)
    weights.count()
    fired: dict[tuple[str, str, str], str] = {}
    per_chunk_ms: list[float] = []
    per_pattern: dict[str, int] = {}

    def recompute(n: int) -> float:
        started = time.perf_counter()
        found, pairs = detections(spark, [str(p) for p in chunk_paths[:n]], weights,
                                  thresholds)
        for row in found.collect():
            key = (row.pattern_id, row.merchant, row.customer)
            if key not in fired:
                fired[key] = Path(chunk_paths[n - 1]).name
                per_pattern[row.pattern_id] = per_pattern.get(row.pattern_id, 0) + 1
        pairs.unpersist()
        return round((time.perf_counter() - started) * 1000, 1)

    for n in range(1, len(chunk_paths) + 1):
        per_chunk_ms.append(recompute(n))
    last = [per_chunk_ms[-1], *(recompute(len(chunk_paths))
                                for _ in range(max(1, last_repeats) - 1))]
    weights.unpersist()
    return {"per_chunk_ms": per_chunk_ms, "last_chunk_runs_ms": last,
            "last_chunk_ms": statistics.median(last),
            "detections_per_pattern": dict(sorted(per_pattern.items())), "fired": fired}
