"""The chunks the driver hands to the JVM (``driver_chunks``): each batch sees its own chunks
and nothing else, the one-chunk query is planned once, and the results equal those of a
DataFrame made from the same rows (the path without the jar)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from py4j.protocol import Py4JError

from spark_detector.spark.fetch import MISSING, OK, REJECTED, fetched_frame, warm_up_body
from spark_detector.spark.job import batch_query_over, driver_chunks
from spark_detector.spark.speedups.driver_chunks import CLASS_NAME, compile_jar

pytestmark = pytest.mark.spark

SORT = [(name, "ascending") for name in (
    "chunk_key", "kind", "merchant", "customer", "category", "gender", "reject_row")]


def rows_of(keys: list[str], lines: int = 200) -> list[tuple]:
    """Fetched rows: a good chunk per key (its own size, so that each key's counts differ),
    then a chunk rejected whole and a missing one."""
    rows = [(key, OK, None, lines + i, 10, 1, 5, 7, 3, 8,
             warm_up_body(lines + i) + "\n0,'C1','1','F','28007','','28007','es_food',1.00,0")
            for i, key in enumerate(keys)]
    return [*rows, (f"{keys[0]}-rejected", REJECTED, "no header", 0, *([None] * 7)),
            (f"{keys[0]}-missing", MISSING, "object does not exist", 0, *([None] * 7))]


@pytest.fixture(scope="module")
def fed(spark):
    fed = driver_chunks(spark)
    assert fed is not None, "the jar is not on the class path: build it with `make`"
    return fed


def test_each_batch_sees_only_its_own_chunks_and_equals_a_dataframe_of_them(spark, fed):
    # batches of several chunks (a shuffle), then of one (the query planned once), in turn
    for keys in (["a", "b", "c", "d", "e"], ["x", "y"], ["one"], ["two"], ["f", "g", "h"]):
        rows = rows_of(keys) if len(keys) > 1 else rows_of(keys)[:1]

        table = fed.aggregate(rows)

        assert set(table.column("chunk_key").to_pylist()) == {row[0] for row in rows}
        expected = batch_query_over(fetched_frame(spark, rows), coalesce=len(rows) == 1).toArrow()
        assert table.sort_by(SORT).equals(expected.sort_by(SORT))


def test_a_batch_that_fails_on_its_way_in_leaves_no_chunk_behind(fed):
    good = rows_of(["kept-out"])[0]
    with pytest.raises(Py4JError):  # the JVM refuses the second row: no such signature
        fed.aggregate([good, ("broken", OK)])

    table = fed.aggregate(rows_of(["next"])[:1])

    assert set(table.column("chunk_key").to_pylist()) == {"next"}


def test_the_one_chunk_query_is_planned_once(fed):
    fed.aggregate(rows_of(["p"])[:1])
    planned = fed._query(1)
    fed.aggregate(rows_of(["q"])[:1])
    assert fed._query(1) is planned
    assert fed.partitions(1) == 1
    assert fed._query(2) is not fed._query(2)  # a shuffle's plan is never run twice


def test_the_java_source_compiles_with_the_compiler_in_sparks_jars(spark, tmp_path):
    jar = compile_jar(spark.sparkContext._gateway, tmp_path / "driver-chunks.jar")

    names = zipfile.ZipFile(jar).namelist()
    assert f"{CLASS_NAME.replace('.', '/')}.class" in names
    assert not list(tmp_path.glob(".*"))  # written in one rename


# The JDK's compiler and the tools that require it (jlink would bring it back for them)
WITH_COMPILER = {"jdk.compiler", "jdk.javadoc", "jdk.jshell", "jdk.jdeps", "jdk.jlink",
                 "jdk.jpackage", "jdk.jartool", "jdk.jconsole", "jdk.internal.opt",
                 "jdk.editpad", "jdk.internal.ed", "jdk.internal.le", "jdk.hotspot.agent"}


def test_the_jar_builds_with_a_java_runtime_that_has_no_compiler(tmp_path):
    """The set-up promise is a Java runtime, not a JDK: build one without the compiler
    module (jlink, where this machine's Java has it) and build the jar with it."""
    java_home = Path(os.environ.get("JAVA_HOME") or Path(shutil.which("java")).resolve().parents[1])
    jlink = java_home / "bin" / "jlink"
    if not jlink.exists():
        pytest.skip("this Java has no jlink to make a runtime without a compiler")
    modules = subprocess.run([java_home / "bin" / "java", "--list-modules"], check=True,
                             capture_output=True, text=True).stdout.split()
    kept = [m.split("@")[0] for m in modules if m.split("@")[0] not in WITH_COMPILER]
    runtime = tmp_path / "jre"
    subprocess.run([jlink, "--add-modules", ",".join(kept), "--output", runtime,
                    "--no-header-files", "--no-man-pages"], check=True, capture_output=True)
    assert not (runtime / "bin" / "javac").exists()

    jar = tmp_path / "driver-chunks.jar"
    subprocess.run([sys.executable, "-m", "spark_detector.spark.speedups.driver_chunks", jar],
                   check=True, env={**os.environ, "JAVA_HOME": str(runtime)}, capture_output=True)

    assert f"{CLASS_NAME.replace('.', '/')}.class" in zipfile.ZipFile(jar).namelist()
