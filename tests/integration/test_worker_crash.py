"""Crash safety: the real worker process is killed with SIGKILL, restarted, and the result is
the same as an uninterrupted run's (docs/architecture.md, guarantees).

Each case arms one failpoint (``spark_detector/failpoints.py``), which makes the process
SIGKILL itself there, exactly as `kill -9` would; the restarted process runs with --drain and
is stopped with SIGTERM once everything is applied.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest

from infra.local.stack import poll_until
from producer.generate import generate
from tests.integration.worker_support import (
    THRESHOLDS,
    AwsResources,
    applied_order,
    assert_files_hold_each_detection_once,
    committed_detections,
    expected_detections,
    split_chunks,
)

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[dict[str, bytes], bytes]:
    out = tmp_path_factory.mktemp("banksim")
    generate(out, rows=20_000, seed=3)
    chunks = split_chunks((out / "transactions.csv").read_bytes(), 1000)
    return chunks, (out / "CustomerImportance.csv").read_bytes()


def worker_env(resources: AwsResources, database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "WORKER_"))}
    env.update({
        "BUCKET": resources.bucket, "QUEUE_URL": resources.queue_url,
        "DATABASE_URL": database_url, "AWS_ENDPOINT_URL": resources.endpoint,
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "SPARK_MASTER": "local[2]",
        "WORKER_WAIT_TIME_SECONDS": "1", "WORKER_MAX_BATCH_CHUNKS": "3",
        # The queue's visibility timeout is 3 s, so a killed worker's messages come back soon;
        # the heartbeat keeps a live worker's batch hidden meanwhile.
        "WORKER_HEARTBEAT_AFTER_SECONDS": "1", "WORKER_VISIBILITY_TIMEOUT_SECONDS": "3",
        "PATID1_MIN_TOTAL": str(THRESHOLDS.upgrade_min_total),
        "PATID2_MIN_COUNT": str(THRESHOLDS.child_min_count),
        "PATID3_MIN_FEMALE": str(THRESHOLDS.dei_min_female),
        **extra,
    })
    return env


def start_worker(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "spark_detector", "run", *args], cwd=REPO,
                            env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def applied_count(database_url: str) -> int:
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM processed_chunks")
        return cur.fetchone()[0]


@pytest.mark.parametrize("failpoint", [
    "before_spark:2",      # a batch received, its Spark job not run: nothing committed
    "after_commit:2",      # a chunk committed, its message not deleted
    "before_s3_write:1",   # detections committed, their outbox file not yet in S3
])
def test_sigkill_then_restart_equals_an_uninterrupted_run(
        failpoint, dataset, moto_endpoint, migrated_database_url, tmp_path):
    chunks, importance = dataset
    resources = AwsResources.create(moto_endpoint, visibility_timeout=3, max_receive_count=20)
    resources.upload(chunks)
    resources.s3.put_object(Bucket=resources.bucket, Key="reference/CustomerImportance.csv",
                            Body=importance)
    resources.enqueue(sorted(chunks))
    log = tmp_path / "worker.log"

    crashed = start_worker(worker_env(resources, migrated_database_url,
                                      WORKER_FAILPOINT=failpoint), log)
    assert crashed.wait(timeout=240) == -signal.SIGKILL, log.read_text()[-3000:]
    before = applied_count(migrated_database_url)
    assert before < len(chunks)

    restarted = start_worker(worker_env(resources, migrated_database_url), log, "--drain")
    try:
        poll_until(lambda: applied_count(migrated_database_url) == len(chunks)
                   and resources.depth() == 0, 240, "every chunk applied",
                   process=restarted, log=log)
    finally:
        restarted.send_signal(signal.SIGTERM)
        code = restarted.wait(timeout=120)
    assert code == 0, log.read_text()[-3000:]

    order = applied_order(migrated_database_url)
    assert sorted(order) == sorted(chunks)
    expected = expected_detections(chunks, importance, order)
    assert committed_detections(migrated_database_url) == expected
    assert_files_hold_each_detection_once(resources, expected, complete=True)
    assert resources.depth(resources.dlq_url) == 0
