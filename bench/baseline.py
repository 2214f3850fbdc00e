"""The baseline most public solutions take: after each new chunk, recompute all three rules
from every row seen so far with Spark. Its cost grows with history; ours should not.

Written as an honest Spark job of that kind (CSV read, quote stripping, averaged weights
joined on the key, per-pair and per-merchant aggregates, exact percentiles, the three rules),
on the same chunks the pipeline processes.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_detector.engine import Thresholds
from spark_detector.spark_job import build_spark


def strip_quotes(column: str):
    return F.regexp_replace(F.trim(F.col(column)), r"^'(.*)'$", "$1")


def split_into_chunks(transactions: Path, rows_per_chunk: int, folder: Path) -> list[Path]:
    """The master file as standalone chunk files (header + rows), as the producer writes them."""
    paths = []
    with transactions.open("rb") as source:
        header = source.readline()
        lines: list[bytes] = []
        for line in source:
            lines.append(line)
            if len(lines) == rows_per_chunk:
                paths.append(_write_chunk(folder, len(paths) + 1, header, lines))
                lines = []
        if lines:
            paths.append(_write_chunk(folder, len(paths) + 1, header, lines))
    return paths


def _write_chunk(folder: Path, seq: int, header: bytes, lines: list[bytes]) -> Path:
    path = folder / f"chunk-{seq:08d}.csv"
    path.write_bytes(header + b"".join(lines))
    return path


def key_weights_df(spark: SparkSession, importance: Path) -> DataFrame:
    raw = spark.read.csv(str(importance), header=True)
    return (raw.select(strip_quotes("Source").alias("customer"),
                       strip_quotes("Target").alias("merchant"),
                       strip_quotes("typeTrans").alias("category"),
                       F.col("Weight").cast("double").alias("weight"))
            .groupBy("customer", "merchant", "category").agg(F.avg("weight").alias("weight")))


def detect_all(spark: SparkSession, files: list[Path], weights: DataFrame,
               t: Thresholds) -> int:
    """All detections over every row of `files`; returns how many (forces the whole job)."""
    rows = spark.read.csv([str(f) for f in files], header=True).select(
        strip_quotes("customer").alias("customer"), strip_quotes("merchant").alias("merchant"),
        strip_quotes("category").alias("category"), strip_quotes("gender").alias("gender"),
        F.col("amount").cast("decimal(18,2)").alias("amount"))
    joined = rows.join(F.broadcast(weights), on=["customer", "merchant", "category"], how="left")
    pairs = joined.groupBy("merchant", "customer").agg(
        F.count("*").alias("txn_count"), F.sum("amount").alias("amount_sum"),
        F.avg("weight").alias("avg_weight"), F.first("gender").alias("gender"))
    merchants = pairs.groupBy("merchant").agg(
        F.sum("txn_count").alias("total"),
        F.sum(F.when(F.col("gender") == "F", 1).otherwise(0)).alias("female"),
        F.sum(F.when(F.col("gender") == "M", 1).otherwise(0)).alias("male"),
        F.expr(f"percentile(txn_count, {t.upgrade_count_percentile})").alias("p90"),
        F.expr(f"percentile(avg_weight, {t.upgrade_weight_percentile})").alias("p10"))
    scored = pairs.join(merchants, on="merchant", how="inner")
    upgrade = scored.where((F.col("total") > t.upgrade_min_total)
                           & (F.col("txn_count") >= F.col("p90"))
                           & (F.col("avg_weight") <= F.col("p10")))
    child = scored.where((F.col("txn_count") >= t.child_min_count)
                         & (F.col("amount_sum") < F.lit(float(t.child_max_avg_amount))
                            * F.col("txn_count")))
    dei = merchants.where((F.col("female") > t.dei_min_female)
                          & (F.col("female") < F.col("male")))
    found = (upgrade.select("merchant", "customer", F.lit("PatId1").alias("pattern"))
             .unionByName(child.select("merchant", "customer", F.lit("PatId2").alias("pattern")))
             .unionByName(dei.select("merchant", F.lit("").alias("customer"),
                                     F.lit("PatId3").alias("pattern"))))
    return len(found.collect())


def run_baseline(transactions: Path, importance: Path, rows_per_chunk: int,
                 every: int) -> dict:
    """Time the recompute after chunks every, 2*every, ... and the last one."""
    spark = build_spark("local[2]", app_name="baseline")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-baseline-") as tmp:
            files = split_into_chunks(transactions, rows_per_chunk, Path(tmp))
            positions = sorted({*range(every, len(files) + 1, every), 1, len(files)})
            weights = key_weights_df(spark, importance).cache()
            weights.count()
            detect_all(spark, files[:1], weights, Thresholds())  # warm-up, not timed
            times, counts = [], []
            for position in positions:
                started = time.perf_counter()
                counts.append(detect_all(spark, files[:position], weights, Thresholds()))
                times.append(round((time.perf_counter() - started) * 1000))
    finally:
        spark.stop()
    return {"positions": positions, "per_chunk_ms": times, "detections_at_position": counts}
