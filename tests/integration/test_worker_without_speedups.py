"""The worker process with the JVM speed-ups switched off (``spark/speedups/``): no
driver-chunks jar on the class path, no class archive mapped. Local mode then hands each
batch to Spark as a DataFrame, and the result is the same."""

from __future__ import annotations

import subprocess

import psutil
import pytest

from infra.local.stack import poll_until
from tests.support.workers import (
    assert_applied_in_production_order,
    log_lines,
    queued_stream,
    run_worker_until_applied,
    worker_env,
)

pytestmark = pytest.mark.spark


def test_the_worker_without_its_speedups_applies_the_same_stream(
        moto_endpoint, migrated_database_url, tmp_path):
    chunks, importance, resources = queued_stream(tmp_path, moto_endpoint)
    env = worker_env(resources, migrated_database_url, SPARK_DRIVER_CHUNKS_JAR="",
                     SPARK_CLASS_ARCHIVE="")
    log = tmp_path / "worker.log"
    jvm: list[list[str]] = []

    def jvm_command_line(worker: subprocess.Popen) -> None:
        poll_until(lambda: log_lines(log, "spark ready"), 180, "Spark started",
                   process=worker, log=log)
        jvm.extend(p.cmdline() for p in psutil.Process(worker.pid).children(recursive=True)
                   if p.name() == "java")

    run_worker_until_applied(env, log, migrated_database_url, len(chunks),
                             during=jvm_command_line)

    [ready] = log_lines(log, "spark ready")
    assert ready["fetch_on"] == "driver" and ready["driver_chunks"] is False
    assert jvm and not any("SharedArchiveFile" in arg or "driver-chunks" in arg
                           for cmdline in jvm for arg in cmdline)
    assert assert_applied_in_production_order(migrated_database_url, chunks, importance)
