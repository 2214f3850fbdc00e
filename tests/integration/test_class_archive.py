"""The JVM class archive: built by its command, mapped by the worker's JVM, harmless when bad."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spark_detector.spark.speedups.class_archive import ARCHIVE_ENV

pytestmark = pytest.mark.spark

REPO = Path(__file__).resolve().parents[2]
# A worker's Spark start, reporting the JVM options it was launched with
START = """
from spark_detector.spark.session import build_spark
spark = build_spark(master="local[1]", app_name="archive-test")
runtime = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()
print("ARGS", list(runtime.getInputArguments()))
assert spark.sql("SELECT 1 AS one").collect()[0].one == 1
spark.stop()
"""


def run(args: list[str], archive: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, ARCHIVE_ENV: str(archive)}
    env.pop("PYSPARK_SUBMIT_ARGS", None)
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=600, check=False)


def test_the_command_builds_an_archive_that_a_worker_start_maps(tmp_path):
    archive = tmp_path / "classes" / "spark-classes.jsa"

    built = run(["-m", "spark_detector.spark.speedups.class_archive"], archive)

    assert built.returncode == 0, built.stderr[-3000:]
    assert archive.stat().st_size > 10 * 2**20
    assert sorted(p.name for p in archive.parent.iterdir()) == ["spark-classes.jsa"]

    started = run(["-c", START], archive)
    assert started.returncode == 0, started.stderr[-3000:]
    assert f"-XX:SharedArchiveFile={archive}" in started.stdout
    # the JVM warns when it cannot use an archive (another class path, say)
    assert "[warning][cds]" not in started.stdout + started.stderr


def test_a_corrupt_archive_does_not_stop_the_worker_from_starting(tmp_path):
    archive = tmp_path / "spark-classes.jsa"
    archive.write_bytes(os.urandom(1 << 20))

    started = run(["-c", START], archive)

    assert started.returncode == 0, started.stderr[-3000:]
    assert f"-XX:SharedArchiveFile={archive}" in started.stdout
