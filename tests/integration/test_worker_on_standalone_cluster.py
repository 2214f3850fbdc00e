"""The real worker on a real Spark standalone cluster whose executors lack the project.

Given a master and a worker started from the pyspark distribution as their own processes,
whose executors run a Python holding only ``infra/executor-requirements.txt`` (no
spark_detector, no psycopg2) in a working directory outside the repository, and Spark
settings given the Spark way (``spark-defaults.conf``): when the worker process drains 12
chunks, then the executors ran its tasks (so its code reached them) and the chunks were
applied in production order with the reference model's detections.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from infra.local.spark_cluster import (
    EXECUTOR_REQUIREMENTS,
    create_venv,
    standalone_cluster,
)
from infra.local.stack import poll_until
from producer.generate import generate
from tests.support.workers import (
    AwsResources,
    applied_count,
    assert_applied_in_production_order,
    assert_files_hold_each_detection_once,
    split_chunks,
    worker_env,
)

pytestmark = [pytest.mark.spark, pytest.mark.timeout(600)]


@pytest.fixture(scope="session")
def executor_python(tmp_path_factory):
    """The executors' interpreter: a venv with the executor requirements alone (~10 s)."""
    return create_venv(tmp_path_factory.mktemp("executor-env"), EXECUTOR_REQUIREMENTS)


def importable(python, module: str) -> bool:
    return subprocess.run([str(python), "-c", f"import {module}"], cwd="/",
                          capture_output=True, check=False).returncode == 0


def spark_ready_line(log_text: str) -> dict:
    for line in log_text.splitlines():
        if line.startswith("{") and '"spark ready"' in line:
            return json.loads(line)
    raise AssertionError("no 'spark ready' line in the worker's log")


def test_worker_on_a_standalone_cluster_whose_executors_lack_the_project(
        executor_python, moto_endpoint, migrated_database_url, tmp_path):
    assert importable(executor_python, "boto3")
    for module in ("spark_detector", "psycopg2", "aws_lambda_powertools"):
        assert not importable(executor_python, module), module

    generate(tmp_path / "data", rows=12_000, seed=3)
    chunks = split_chunks((tmp_path / "data" / "transactions.csv").read_bytes(), 1000)
    importance = (tmp_path / "data" / "CustomerImportance.csv").read_bytes()
    assert len(chunks) == 12
    resources = AwsResources.create(moto_endpoint)
    resources.upload(chunks)
    resources.s3.put_object(Bucket=resources.bucket, Key="reference/CustomerImportance.csv",
                            Body=importance)
    resources.enqueue(sorted(chunks))

    # Spark settings where a Spark user puts them; two executors of one core each
    conf_dir = tmp_path / "spark-conf"
    conf_dir.mkdir()
    (conf_dir / "spark-defaults.conf").write_text(
        f"spark.pyspark.python {executor_python}\n"
        "spark.executor.cores 1\n"
        "spark.executor.memory 512m\n"
        "spark.cores.max 2\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    log = tmp_path / "worker.log"
    with standalone_cluster(tmp_path / "cluster", cores=2, memory="1g") as cluster:
        env = worker_env(resources, migrated_database_url, SPARK_MASTER=cluster.master_url,
                         SPARK_CONF_DIR=str(conf_dir), WORKER_MAX_BATCH_CHUNKS="4")
        env.pop("PYSPARK_PYTHON", None)
        worker = subprocess.Popen([sys.executable, "-m", "spark_detector", "run", "--drain"],
                                  cwd=run_dir, env=env, stdout=log.open("ab"),
                                  stderr=subprocess.STDOUT)
        try:
            poll_until(lambda: applied_count(migrated_database_url) == len(chunks)
                       and resources.depth() == 0, 300, "every chunk applied",
                       process=worker, log=log, tail=3000)
        except Exception as exc:
            raise AssertionError(f"{exc}\n{cluster.executor_logs()}") from exc
        finally:
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(timeout=120)
        assert code == 0, log.read_text()[-3000:]
        executors = cluster.executor_dirs()

    # Then the cluster's two executors ran the tasks (no local fallback exists for them)
    assert len(executors) == 2, executors
    ready = spark_ready_line(log.read_text())
    assert ready["master"] == cluster.master_url
    assert ready["default_parallelism"] == 2 and ready["shuffle_partitions"] == "2"
    assert ready["fetch_on"] == "executors"  # WORKER_FETCH_ON=auto on a cluster
    assert ready["driver_chunks"] is False  # the executors are other JVMs
    # the warm-up ran on the executors, which lack the driver's dependencies (pyarrow)
    assert '"spark warm"' in log.read_text()
    assert "overlapped Spark job failed" not in log.read_text()
    # And the result is the reference model's, in production order
    expected = assert_applied_in_production_order(migrated_database_url, chunks, importance)
    assert expected
    assert_files_hold_each_detection_once(resources, expected, complete=True)
    assert resources.depth(resources.dlq_url) == 0
