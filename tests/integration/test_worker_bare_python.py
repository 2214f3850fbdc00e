"""The worker runs when PATH's ``python3`` is a bare interpreter without the project's
dependencies: Spark's Python workers must use the driver's interpreter in local mode.

In local mode the driver fetches the chunks and no Python worker starts; this test makes the
executors fetch (``WORKER_FETCH_ON=executors``), so that Python workers run the fetch.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.workers import (
    assert_applied_in_production_order,
    queued_stream,
    run_worker_until_applied,
    worker_env,
)

pytestmark = pytest.mark.spark


def test_worker_runs_with_a_bare_python3_first_on_path(
        moto_endpoint, migrated_database_url, tmp_path):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    probe = subprocess.run([bare / "bin" / "python3", "-c", "import boto3"],
                           capture_output=True, check=False)
    assert probe.returncode != 0, "the bare interpreter must not see boto3"

    chunks, importance, resources = queued_stream(tmp_path, moto_endpoint, rows=4000)
    env = worker_env(resources, migrated_database_url, PATH=f"{bare / 'bin'}:/usr/bin:/bin",
                     WORKER_FETCH_ON="executors")
    env.pop("PYSPARK_PYTHON", None)
    log = tmp_path / "worker.log"
    run_worker_until_applied(env, log, migrated_database_url, len(chunks))
    assert '"fetch_on": "executors"' in log.read_text()
    assert assert_applied_in_production_order(migrated_database_url, chunks, importance)
