"""Spark settings the Spark way: what the user set wins, the worker's values only fill gaps.

Each case starts the worker's ``build_spark`` in a fresh process (settings are read when the
JVM starts), as ``python -m spark_detector`` would, and reports the session's settings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import pytest

from spark_detector.spark.session import zip_package

pytestmark = pytest.mark.spark

REPORT = """
import json
from spark_detector.spark.session import build_spark
spark = build_spark()
context = spark.sparkContext
print(json.dumps({
    "master": context.master, "app": context.appName,
    "default_parallelism": context.defaultParallelism,
    "shuffle_partitions": spark.conf.get("spark.sql.shuffle.partitions"),
    "adaptive": spark.conf.get("spark.sql.adaptive.enabled"),
    "executor_memory": context.getConf().get("spark.executor.memory", None),
    "py_files": list(context._python_includes),
    "driver_memory": context.getConf().get("spark.driver.memory", None),
    "java_options": context.getConf().get("spark.driver.extraJavaOptions", None),
    "max_heap_mib": spark._jvm.java.lang.Runtime.getRuntime().maxMemory() // 2**20,
}))
spark.stop()
"""


def session_settings(tmp_path, defaults: str = "", submit_args: str = "",
                     master: str | None = None) -> dict:
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir(exist_ok=True)
    (conf_dir / "spark-defaults.conf").write_text(defaults)
    env = {k: v for k, v in os.environ.items()
           if k not in ("SPARK_MASTER", "PYSPARK_SUBMIT_ARGS", "SPARK_CONF_DIR")}
    env["SPARK_CONF_DIR"] = str(conf_dir)
    if submit_args:
        env["PYSPARK_SUBMIT_ARGS"] = f"{submit_args} pyspark-shell"
    script = REPORT.replace("build_spark()", f"build_spark({master!r})")
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=180, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_spark_submit_conf_and_spark_defaults_win_over_the_workers_values(tmp_path):
    settings = session_settings(
        tmp_path,
        defaults="spark.sql.adaptive.enabled true\nspark.executor.memory 3g\n"
                 "spark.driver.memory=1g\n",
        submit_args="--master local[1] --conf spark.sql.shuffle.partitions=7 --name mine")

    assert settings["master"] == "local[1]"
    assert settings["app"] == "mine"
    assert settings["shuffle_partitions"] == "7"
    assert settings["adaptive"] == "true"
    assert settings["executor_memory"] == "3g"
    assert settings["driver_memory"] == "1g" and settings["max_heap_mib"] > 700
    assert settings["py_files"] == ["spark_detector.zip"]  # the code is shipped either way


def test_unset_settings_get_the_workers_defaults_and_spark_master_names_the_master(tmp_path):
    settings = session_settings(tmp_path, master="local[3]")

    assert settings["master"] == "local[3]"
    assert settings["app"] == "spark_detector"
    assert settings["adaptive"] == "false"
    # the driver JVM (local mode: the executors too) gets the worker's heap and collector
    assert settings["driver_memory"] == "512m" and settings["max_heap_mib"] <= 512
    assert "-XX:+UseSerialGC" in settings["java_options"]
    # shuffle partitions follow the default parallelism (3 cores), not Spark's 200
    assert settings["default_parallelism"] == 3 and settings["shuffle_partitions"] == "3"


def test_the_shipped_zip_holds_the_package_sources_only(tmp_path):
    archive = zip_package(tmp_path / "spark_detector.zip")

    names = zipfile.ZipFile(archive).namelist()
    assert {"spark_detector/__init__.py", "spark_detector/spark/job.py",
            "spark_detector/parsing.py", "spark_detector/chunk_aggregates.py"} <= set(names)
    assert all(name.startswith("spark_detector/") and name.endswith(".py") for name in names)
