"""A batch's chunks handed to Spark by the driver, through a query planned once (local mode):
``python -m spark_detector.spark.speedups.driver_chunks [PATH]`` builds the jar it needs.

Spark runs a DataFrame's plan again on new data only when a source reads that data at
execution time. A DataFrame made from each batch's rows (``spark.fetch.fetched_frame``)
is a new query every time: Spark analyses, optimises and plans it and generates its code
again, which was most of a one-chunk job (measured, one-chunk jobs with their fetch and
``assemble_batch``, 100 of each interleaved in one warm process: 163.1 ms with a DataFrame per
chunk, 92.5 ms with the plan reused; the same results; docs/performance.md, fifth round).

So in local mode, where the executors live in the driver's JVM, the driver puts each batch's
``FETCHED_SCHEMA`` rows in a static map of a small JVM class (``jvm/DriverChunks.java``, a
Spark DataSource V2 table), runs the batch query over that table, and empties the map. The
one-chunk query is planned once; a batch of several chunks, spread over the
cores, is a new query over the same table (``DriverChunks`` says why). On a cluster the
executors are other JVMs, which cannot see the map: there the batch query reads
``spark.fetch.fetch_chunks`` as before.

The class is compiled with Janino, the Java compiler inside Spark's own jars, so a Java
runtime is enough (no JDK). ``spark.session.jvm_defaults`` puts the jar on the driver's class
path when it exists; without it the worker makes a DataFrame per batch, which is slower and
gives the same results. ``make`` builds the jar with the virtual environment, before the class
archive (which records the class path); the worker's image builds it at build time.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from spark_detector.spark.fetch import FETCHED_SCHEMA
from spark_detector.spark.speedups.launch import JAR_ENV, build_command_target, jar_path

SOURCE = Path(__file__).with_name("jvm") / "DriverChunks.java"
CLASS_NAME = "spark_detector.jvm.DriverChunks"

# The map is one per JVM: one batch at a time fills it, runs and empties it.
_FEEDING = threading.Lock()


def compile_jar(gateway, path: Path, source: Path = SOURCE) -> Path:
    """Compile ``source`` with Janino in the JVM behind ``gateway`` (Spark's jars on its class
    path) and write the classes to the jar ``path`` in one rename."""
    jvm = gateway.jvm
    with tempfile.TemporaryDirectory(prefix="driver-chunks-") as classes:
        compiler = jvm.org.codehaus.janino.Compiler()
        compiler.setDestinationDirectory(jvm.java.io.File(classes), False)
        sources = gateway.new_array(jvm.java.io.File, 1)
        sources[0] = jvm.java.io.File(str(source))
        compiler.compile(sources)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as jar:
            for compiled in sorted(Path(classes).rglob("*.class")):
                jar.write(compiled, compiled.relative_to(classes).as_posix())
    os.replace(partial, path)
    return path


def build_jar(path: Path) -> Path:
    """Compile the jar in a JVM of its own (Spark's launcher, no SparkContext)."""
    from pyspark.java_gateway import launch_gateway

    gateway = launch_gateway()
    try:
        return compile_jar(gateway, path)
    finally:
        gateway.close()
        gateway.proc.stdin.close()  # the JVM exits when its stdin closes
        gateway.proc.wait(timeout=60)


class DriverChunks:
    """The batch query over the chunks the driver hands to the JVM. ``plan(source,
    partitions)``: the query over the source's DataFrame of that many partitions.

    Only the one-chunk query (one partition, no shuffle) is planned once and run again: a
    plan with a shuffle cannot be, because Spark keeps a shuffle's map output for the plan and
    a second run reads the first run's rows (seen in the tests). Batches of several chunks
    come when the queue has a backlog, where one query's fixed cost is shared by up to
    ``WORKER_MAX_BATCH_CHUNKS`` chunks; one chunk at a time is the nominal rate, where that
    cost is most of a job.
    """

    def __init__(self, spark: SparkSession,
                 plan: Callable[[DataFrame, int], DataFrame]) -> None:
        self._spark = spark
        self._plan = plan
        self._map = getattr(spark._jvm, CLASS_NAME)
        self._one_chunk: DataFrame | None = None

    @staticmethod
    def available(spark: SparkSession) -> bool:
        """Spark runs in local mode and the class is on the driver's class path."""
        jvm = spark._jvm
        return ((spark.sparkContext.master or "").startswith("local") and jvm is not None
                and jvm.org.apache.spark.util.Utils.classIsLoadable(CLASS_NAME))

    def partitions(self, n_chunks: int) -> int:
        """One partition for one chunk; else a chunk or more per core."""
        return 1 if n_chunks <= 1 else min(n_chunks, self._spark.sparkContext.defaultParallelism)

    def _query(self, partitions: int) -> DataFrame:
        if partitions == 1 and self._one_chunk is not None:
            return self._one_chunk
        source = (self._spark.read.format(CLASS_NAME).schema(FETCHED_SCHEMA)
                  .option("slots", str(partitions)).load())
        query = self._plan(source, partitions)
        if partitions == 1:
            self._one_chunk = query
        return query

    def aggregate(self, rows: Sequence[tuple]) -> pa.Table:
        """The batch query's result for these ``FETCHED_SCHEMA`` rows, as an Arrow table."""
        partitions = self.partitions(len(rows))
        query = self._query(partitions)
        with _FEEDING:
            self._map.clear()
            try:
                for index, row in enumerate(rows):
                    self._map.put(index % partitions, *row)
                return query.toArrow()
            finally:
                self._map.clear()  # no chunk outlives its batch in the JVM


def main(argv: list[str] | None = None) -> int:
    path = build_command_target(argv, "spark_detector.spark.speedups.driver_chunks", __doc__,
                                "the driver chunks jar", JAR_ENV, jar_path())
    if path is None:
        return 0
    started = time.perf_counter()
    build_jar(path)
    print(f"driver chunks jar: {path} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
