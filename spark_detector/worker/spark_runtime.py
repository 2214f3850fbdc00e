"""The worker's Spark runtime: one SparkSession and the key weights for the process."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pyarrow as pa

from spark_detector.config import WorkerSettings, fetches_on_driver
from spark_detector.failpoints import failpoint
from spark_detector.spark.batch_result import weight_table
from spark_detector.spark.job import (
    BatchResult,
    FetchSpec,
    aggregate_batch,
    driver_chunks,
    warm_up,
)
from spark_detector.spark.reference_weights import KeyWeights, load_key_weights
from spark_detector.spark.session import (
    build_spark,
    follow_parallelism,
    user_set_shuffle_partitions,
)

logger = logging.getLogger(__name__)


def _jvm_process(spark):
    """The JVM process PySpark launched for this session (None under spark-submit)."""
    gateway = getattr(spark.sparkContext, "_gateway", None)
    return getattr(gateway, "proc", None)


def jvm_alive(spark) -> bool:
    """False once the JVM that PySpark launched for this session has exited."""
    process = _jvm_process(spark)
    return process is None or process.poll() is None


def _load_weights(s3, connect: Callable[[], object], settings: WorkerSettings,
                  stop: threading.Event) -> tuple[KeyWeights, pa.Table]:
    """The key weights, and as the Arrow table the batches join (the dict is not kept)."""
    weights = load_key_weights(s3, connect, settings, stop)
    return weights, weight_table(weights.weights)


class SparkAggregator:
    """Holds the SparkSession and the key weights; `aggregate` runs one micro-batch."""

    def __init__(self, spark, fetch_spec: FetchSpec, weights: pa.Table) -> None:
        self.spark = spark
        self.fetch_spec = fetch_spec
        self.weights = weights
        # executors may join (or leave) after start-up: size each batch's shuffle to them
        self._follow_parallelism = not user_set_shuffle_partitions(spark)

    @classmethod
    def start(cls, settings: WorkerSettings, s3, connect: Callable[[], object],
              stop: threading.Event) -> SparkAggregator:
        """Start Spark and load the key weights side by side: the JVM's start-up and the
        weights (cached in PostgreSQL, or computed from the object) use different processes,
        so start-up costs the longer of the two, not their sum. The warm-up is not part of
        it: the worker runs ``warm_up`` on its Spark thread while it starts receiving."""
        started = time.perf_counter()
        with ThreadPoolExecutor(1, thread_name_prefix="key-weights") as pool:
            loading = pool.submit(_load_weights, s3, connect, settings, stop)
            try:
                spark = build_spark(settings.spark_master)
                spark_ms = round((time.perf_counter() - started) * 1000)
                fetch_spec = replace(
                    FetchSpec.from_env(settings.bucket), max_rows=settings.max_chunk_rows,
                    on_driver=fetches_on_driver(settings.fetch_on, spark.sparkContext.master or ""))
            except BaseException:
                stop.set()  # a weights loader waiting for the object gives up
                raise
            try:
                weights, table = loading.result()
            except BaseException:  # CustomerImportance rejected, say: no session left behind
                spark.stop()
                raise
        context = spark.sparkContext
        logger.info("spark ready", extra={
            "master": context.master, "default_parallelism": context.defaultParallelism,
            "shuffle_partitions": spark.conf.get("spark.sql.shuffle.partitions"),
            "fetch_on": "driver" if fetch_spec.on_driver else "executors",
            # the driver hands chunks to a query planned once (local mode, with the jar)
            "driver_chunks": fetch_spec.on_driver and driver_chunks(spark) is not None,
            "reference": weights.source, "reference_etag": weights.etag,
            "key_weights": len(weights.weights), "weights_cached": weights.cached,
            "spark_start_ms": spark_ms,
            "start_up_ms": round((time.perf_counter() - started) * 1000)})
        return cls(spark, fetch_spec, table)

    def warm_up(self) -> None:
        """One made-up batch through the whole query (``spark.job.warm_up``): the first real
        batch then does not pay the Python workers' start, class loading and code generation."""
        started = time.perf_counter()
        warm_up(self.spark, self.fetch_spec)
        logger.info("spark warm", extra={
            "warm_up_ms": round((time.perf_counter() - started) * 1000)})

    def probe(self) -> None:
        """A made-up batch of one small chunk, no S3: raises if the runtime fails it too (the
        worker's test of whether a failed job was the chunk's or the runtime's)."""
        failpoint("spark_job")
        warm_up(self.spark, self.fetch_spec, lines=100)

    def alive(self) -> bool:
        return jvm_alive(self.spark)

    def kill(self) -> None:
        """End the JVM at once: one whose job overran may never answer a polite stop."""
        process = _jvm_process(self.spark)
        if process is not None:
            process.kill()

    def aggregate(self, chunks: Mapping[str, str]) -> BatchResult:
        """One micro-batch: ``chunks`` maps each key to the version (ETag) to read."""
        failpoint("spark_job")
        if self._follow_parallelism:
            follow_parallelism(self.spark)
        return aggregate_batch(self.spark, self.fetch_spec, list(chunks), self.weights, chunks)

    def stop(self) -> None:
        self.spark.stop()
