"""Crash safety: the real worker process is killed with SIGKILL, restarted, and the result is
the same as an uninterrupted run's (docs/architecture.md, guarantees).

Each case arms one failpoint (``spark_detector/failpoints.py``), which makes the process
SIGKILL itself there, exactly as `kill -9` would; the restarted process runs with --drain and
is stopped with SIGTERM once everything is applied.
"""

from __future__ import annotations

import signal

import pytest

from infra.local.stack import poll_until
from producer.generate import generate
from tests.support.workers import (
    AwsResources,
    applied_count,
    assert_applied_in_production_order,
    assert_files_hold_each_detection_once,
    split_chunks,
    start_worker,
    worker_env,
)

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[dict[str, bytes], bytes]:
    out = tmp_path_factory.mktemp("banksim")
    generate(out, rows=20_000, seed=3)
    chunks = split_chunks((out / "transactions.csv").read_bytes(), 1000)
    return chunks, (out / "CustomerImportance.csv").read_bytes()


@pytest.mark.parametrize("failpoint", [
    "before_spark:2",      # a batch received, its Spark job not run: nothing committed
    "after_spark:2",       # a Spark job done, nothing of its batch applied
    "after_commit:2",      # a chunk committed, its message not deleted
    "before_s3_write:1",   # detections committed, their outbox file not yet in S3
    "after_s3_write:1",    # a file in S3, not yet marked written: the restart writes it again
])
def test_sigkill_then_restart_equals_an_uninterrupted_run(
        failpoint, dataset, moto_endpoint, migrated_database_url, tmp_path):
    chunks, importance = dataset
    resources = AwsResources.create(moto_endpoint, visibility_timeout=3, max_receive_count=20)
    # versioned: every put of a detection file is kept, to compare a rewrite with the first
    resources.s3.put_bucket_versioning(Bucket=resources.bucket,
                                       VersioningConfiguration={"Status": "Enabled"})
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

    expected = assert_applied_in_production_order(migrated_database_url, chunks, importance)
    assert_files_hold_each_detection_once(resources, expected, complete=True)
    assert resources.depth(resources.dlq_url) == 0
    # a detection file written again (after a crash between its put and its mark) has the
    # same bytes: one ETag per file, whatever the number of puts
    puts = resources.s3.list_object_versions(Bucket=resources.bucket,
                                             Prefix="detected_patterns/")["Versions"]
    etags = {(v["Key"], v["ETag"]) for v in puts}
    assert len({key for key, _ in etags}) == len(etags)
    assert (len(puts) > len(etags)) == failpoint.startswith("after_s3_write")
