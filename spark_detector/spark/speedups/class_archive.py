"""The Spark driver JVM's classes, archived once so that each worker start maps them instead of
loading them from Spark's jars: ``python -m spark_detector.spark.speedups.class_archive [PATH]``.

The JVM's class-data sharing (CDS, a "dynamic archive", Java 13+): a JVM started with
``-XX:ArchiveClassesAtExit=FILE`` writes the classes it loaded, parsed and verified, when it
exits; a JVM started with ``-XX:SharedArchiveFile=FILE`` maps them. Measured here, Spark's
session took 5.2-6.4 s to start without the archive and 3.2-3.9 s with it (starts of each
interleaved), and its first query 2.3-2.6 s against 1.1-1.5 s.

This command starts Spark in local mode with the first flag, runs the worker's warm-up (made-up
chunks through the real batch query: no S3, no database), stops it, waits for the JVM to write
the archive, and moves it into place in one rename. ``spark.session`` passes the second flag
whenever the archive exists (``archive_path``). An archive written for another Java or
another Spark install does not break a start: the JVM checks that its class path matches,
warns and starts without it. ``make`` builds the archive with the virtual environment, the
worker's image at build time.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from spark_detector.spark.speedups.launch import (
    ARCHIVE_ENV,
    archive_path,
    build_command_target,
    splits,
)


def build_archive(path: Path) -> Path | None:
    """Write the archive to ``path`` (replacing any), from a fresh JVM in this process; None,
    writing nothing, where the worker would not map it: its JVM options are not its own to
    pass (spark-submit, PYSPARK_SUBMIT_ARGS, or spark-defaults.conf setting them), or the
    path has whitespace."""
    from pyspark import SparkContext

    from spark_detector.spark.fetch import FetchSpec
    from spark_detector.spark.job import warm_up
    from spark_detector.spark.session import (
        JAVA_OPTIONS,
        build_spark,
        jvm_defaults,
        spark_conf,
        spark_defaults_keys,
    )

    if splits(path):
        return None
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    # -Xlog: the JVM warns of every class it cannot archive (hundreds), which says nothing here
    writing = f"-XX:ArchiveClassesAtExit={partial} -Xlog:cds*=error"
    launch = jvm_defaults(os.environ, spark_defaults_keys(os.environ), writing)
    if JAVA_OPTIONS not in launch:
        return None
    if SparkContext._gateway is not None:
        raise RuntimeError("the JVM is already running: the archive needs a fresh one")
    path.parent.mkdir(parents=True, exist_ok=True)
    spark_conf(launch)
    spark = build_spark(master="local[2]", app_name="class_archive")
    warm_up(spark, FetchSpec("class-archive", on_driver=True), lines=1_000)
    spark.stop()
    # the JVM writes the archive as it exits, which it does when its stdin closes
    gateway = SparkContext._gateway
    if gateway is None:
        raise RuntimeError("the JVM is gone before it wrote the archive")
    process = gateway.proc
    process.stdin.close()
    process.wait(timeout=300)
    if not partial.is_file() or partial.stat().st_size == 0:
        raise RuntimeError(f"the JVM wrote no archive (exit status {process.returncode})")
    os.replace(partial, path)
    return path


def main(argv: list[str] | None = None) -> int:
    path = build_command_target(argv, "spark_detector.spark.speedups.class_archive", __doc__,
                                "the class archive", ARCHIVE_ENV, archive_path())
    if path is None:
        return 0
    started = time.perf_counter()
    if build_archive(path) is None:
        print(f"no class archive: the worker would not use {path} (its path has whitespace, "
              "or its JVM options are left to spark-submit, PYSPARK_SUBMIT_ARGS or "
              "spark-defaults.conf here)", file=sys.stderr)
        return 0
    print(f"class archive: {path} ({path.stat().st_size / 2**20:.0f} MiB, "
          f"{time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
