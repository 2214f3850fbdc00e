"""Two worker processes, each with its own Spark, on one queue give the result of one.

Given 30 chunks queued in any order once both workers are ready - one started as ``python -m
spark_detector run``, the other by ``spark-submit --py-files`` through
``infra/spark_submit_main.py``, each on ``local[1]`` - when both have taken turns at the
stream (``share_the_stream``) and drained the queue, then each applied chunks, every chunk was
applied exactly once, in production order, and the detections equal the reference model's
over that order (docs/scaling.md).
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from infra.local.spark_cluster import SPARK_HOME
from infra.local.stack import poll_until
from producer.generate import generate
from spark_detector.spark.session import zip_package
from tests.support.workers import (
    REPO,
    AwsResources,
    applied_by,
    applied_count,
    assert_applied_in_production_order,
    assert_each_worker_applied_and_one_chunk_waited,
    assert_files_hold_each_detection_once,
    log_lines,
    share_the_stream,
    split_chunks,
    start_worker,
    worker_env,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def said(log: Path, message: str) -> bool:
    return bool(log_lines(log, message))


def stop_spark_submit(process: subprocess.Popen) -> int:
    """SIGTERM the Python driver spark-submit started (the worker drains on it), then wait.

    Signalling spark-submit's JVM instead would leave the Python driver without its gateway.
    """
    for child in psutil.Process(process.pid).children(recursive=True):
        try:
            if "spark_submit_main.py" in " ".join(child.cmdline()):
                child.send_signal(signal.SIGTERM)
        except psutil.Error:  # a child that has just exited (or is a zombie)
            continue
    return process.wait(timeout=120)


def test_two_workers_on_one_queue_apply_each_chunk_once_as_one_worker_would(
        moto_endpoint, migrated_database_url, tmp_path):
    generate(tmp_path / "data", rows=15_000, seed=3)
    chunks = split_chunks((tmp_path / "data" / "transactions.csv").read_bytes(), 500)
    importance = (tmp_path / "data" / "CustomerImportance.csv").read_bytes()
    assert len(chunks) == 30
    resources = AwsResources.create(moto_endpoint)
    resources.upload(chunks)
    resources.s3.put_object(Bucket=resources.bucket, Key="reference/CustomerImportance.csv",
                            Body=importance)
    env = worker_env(resources, migrated_database_url, WORKER_MAX_BATCH_CHUNKS="3")
    env.pop("SPARK_MASTER")
    py_files = zip_package(tmp_path / "dist" / "spark_detector.zip")

    module_log, submit_log = tmp_path / "worker-module.log", tmp_path / "worker-submit.log"
    by_module = start_worker({**env, "SPARK_MASTER": "local[1]"}, module_log, "--drain")
    by_submit = subprocess.Popen(
        [str(SPARK_HOME / "bin" / "spark-submit"), "--master", "local[1]",
         "--conf", f"spark.pyspark.driver.python={sys.executable}",
         "--py-files", str(py_files), str(REPO / "infra" / "spark_submit_main.py"), "run"],
        cwd=tmp_path, env={**env, "SPARK_HOME": str(SPARK_HOME)},
        stdout=submit_log.open("ab"), stderr=subprocess.STDOUT)
    try:
        for process, log in ((by_module, module_log), (by_submit, submit_log)):
            poll_until(lambda log=log: said(log, "worker started"), 180, "worker ready",
                       process=process, log=log, tail=3000)
        # the events in any order; the workers take turns at the stream's head (left alone,
        # one keeps it), the spark-submit one stopped halfway: the other finishes, drained
        share_the_stream(
            migrated_database_url, len(chunks),
            lambda: resources.enqueue(random.Random(5).sample(sorted(chunks), len(chunks))),
            (by_submit, submit_log), (by_module, module_log),
            stop_first=lambda: stop_spark_submit(by_submit))
        poll_until(lambda: applied_count(migrated_database_url) == len(chunks)
                   and resources.depth() == 0, 300, "every chunk applied",
                   process=by_module, log=module_log, tail=3000)
    finally:
        by_module.send_signal(signal.SIGTERM)
        codes = (by_module.wait(timeout=120),
                 stop_spark_submit(by_submit) if by_submit.poll() is None else by_submit.poll())
    assert codes == (0, 0), submit_log.read_text()[-3000:]

    # Then the spark-submit worker's driver ran the --py-files code, which Spark shipped
    assert said(submit_log, "code shipped by spark-submit --py-files")
    assert said(module_log, "code shipped with addPyFile")
    # And each chunk was applied once, by one worker or the other, in production order; both
    # took part, and chunks waited for predecessors
    assert sorted(applied_by(module_log) + applied_by(submit_log)) == sorted(chunks)
    assert_each_worker_applied_and_one_chunk_waited([module_log, submit_log])
    # And the detections are one sequential apply's: the reference model's in that order
    expected = assert_applied_in_production_order(migrated_database_url, chunks, importance)
    assert expected
    assert_files_hold_each_detection_once(resources, expected, complete=True)
    assert resources.depth(resources.dlq_url) == 0
