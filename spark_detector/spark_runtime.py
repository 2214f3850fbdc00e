"""The worker's Spark runtime: one SparkSession and the broadcast weights for the process."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace

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

logger = logging.getLogger(__name__)


class ReferenceUnavailable(RuntimeError):
    """CustomerImportance could not be read before the worker was asked to stop."""


class ReferenceRejected(RuntimeError):
    """CustomerImportance cannot be used (too large, or not readable): a start-up error."""


ACCESS_DENIED_HINT = (
    "access denied: check that the worker's role has s3:GetObject on the object and "
    "s3:ListBucket on the bucket (without ListBucket, S3 answers 403 for a missing key)")


def read_reference(s3, settings: WorkerSettings, stop: threading.Event) -> bytes:
    """The CustomerImportance bytes, waiting for the producer to upload them if need be.

    The worker may start before the producer's first upload; it waits (backing off to 10 s
    between looks) rather than detect with no weights, which would fire wrong PatId1s. Its
    size is checked with a HEAD first, so an oversized object is a clear error, not an
    out-of-memory kill.
    """
    where = f"s3://{settings.bucket}/{settings.reference_key}"
    attempt = 0
    while True:
        try:
            head = s3.head_object(Bucket=settings.bucket, Key=settings.reference_key)
            size = int(head["ContentLength"])
            if size > settings.max_reference_bytes:
                raise ReferenceRejected(
                    f"{where} is too large: {size:,} bytes, the limit is "
                    f"{settings.max_reference_bytes:,} (WORKER_MAX_REFERENCE_BYTES)")
            return s3.get_object(Bucket=settings.bucket, Key=settings.reference_key)[
                "Body"].read()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code"))
            if code in {"AccessDenied", "403", "Forbidden"}:
                raise ReferenceRejected(f"{where}: {ACCESS_DENIED_HINT}") from exc
            if code not in {"NoSuchKey", "404", "NotFound"}:
                raise
        delay = backoff_delays(attempt + 2, base=0.5, cap=10.0)[-1]
        attempt += 1
        logger.warning("reference data not there yet; waiting", extra={
            "bucket": settings.bucket, "key": settings.reference_key, "retry_in_s": delay})
        if stop.wait(delay):
            raise ReferenceUnavailable(where)


def jvm_alive(spark) -> bool:
    """False once the JVM that PySpark launched for this session has exited."""
    gateway = getattr(spark.sparkContext, "_gateway", None)
    process = getattr(gateway, "proc", None)
    return process is None or process.poll() is None


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
        fetch_spec = replace(FetchSpec.from_env(settings.bucket),
                             max_rows=settings.max_chunk_rows)
        started = time.perf_counter()
        warm_up(spark, fetch_spec, weights)
        context = spark.sparkContext
        logger.info("spark ready", extra={
            "master": context.master, "default_parallelism": context.defaultParallelism,
            "shuffle_partitions": spark.conf.get("spark.sql.shuffle.partitions"),
            "reference_bytes": len(reference),
            "warm_up_ms": round((time.perf_counter() - started) * 1000)})
        return cls(spark, fetch_spec, weights)

    def alive(self) -> bool:
        return jvm_alive(self.spark)

    def aggregate(self, keys: list[str]) -> BatchResult:
        if self._follow_parallelism:
            follow_parallelism(self.spark)
        return aggregate_batch(self.spark, self.fetch_spec, keys, self.weights)

    def stop(self) -> None:
        self.spark.stop()
