"""The worker's Spark runtime: one SparkSession and the broadcast weights for the process."""

from __future__ import annotations

import threading
import time

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from spark_detector.config import WorkerSettings
from spark_detector.retry import backoff_delays
from spark_detector.spark_job import (
    BatchResult,
    FetchSpec,
    aggregate_batch,
    load_weights,
    warm_up,
)
from spark_detector.spark_session import (
    build_spark,
    follow_parallelism,
    user_set_shuffle_partitions,
)

logger = Logger(service="spark_detector")


class ReferenceUnavailable(RuntimeError):
    """CustomerImportance could not be read before the worker was asked to stop."""


def read_reference(s3, settings: WorkerSettings, stop: threading.Event) -> bytes:
    """The CustomerImportance bytes, waiting for the producer to upload them if need be.

    The worker may start before the producer's first upload; it waits (backing off to 10 s
    between looks) rather than detect with no weights, which would fire wrong PatId1s.
    """
    attempt = 0
    while True:
        try:
            return s3.get_object(Bucket=settings.bucket, Key=settings.reference_key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in {"NoSuchKey", "404"}:
                raise
        delay = backoff_delays(attempt + 2, base=0.5, cap=10.0)[-1]
        attempt += 1
        logger.warning("reference data not there yet; waiting", extra={
            "bucket": settings.bucket, "key": settings.reference_key, "retry_in_s": delay})
        if stop.wait(delay):
            raise ReferenceUnavailable(f"s3://{settings.bucket}/{settings.reference_key}")


class SparkAggregator:
    """Holds the SparkSession and the cached key weights; `aggregate` runs one micro-batch."""

    def __init__(self, spark, fetch_spec: FetchSpec, weights) -> None:
        self.spark = spark
        self.fetch_spec = fetch_spec
        self.weights = weights
        # executors may join (or leave) after start-up: size each batch's shuffle to them
        self._follow_parallelism = not user_set_shuffle_partitions(spark)

    @classmethod
    def start(cls, settings: WorkerSettings, s3, stop: threading.Event) -> SparkAggregator:
        reference = read_reference(s3, settings, stop)
        spark = build_spark(settings.spark_master)
        weights = load_weights(spark, reference)
        fetch_spec = FetchSpec.from_env(settings.bucket)
        started = time.perf_counter()
        warm_up(spark, fetch_spec, weights)
        context = spark.sparkContext
        logger.info("spark ready", extra={
            "master": context.master, "default_parallelism": context.defaultParallelism,
            "shuffle_partitions": spark.conf.get("spark.sql.shuffle.partitions"),
            "reference_bytes": len(reference),
            "warm_up_ms": round((time.perf_counter() - started) * 1000)})
        return cls(spark, fetch_spec, weights)

    def aggregate(self, keys: list[str]) -> BatchResult:
        if self._follow_parallelism:
            follow_parallelism(self.spark)
        return aggregate_batch(self.spark, self.fetch_spec, keys, self.weights)

    def stop(self) -> None:
        self.spark.stop()
