"""The whole pipeline as real processes: producer -> S3 -> Lambda runner + real trigger handler
-> SQS -> Spark worker -> PostgreSQL + S3, checked against the reference model
(tests/reference_model.py).

Given 9,000 generated rows streamed as 30 chunks of 300 at --interval 0, with thresholds
small enough for all three patterns to fire on so little data (62 detections: two files),
when the worker has applied every chunk and is stopped with --drain, then every chunk was
applied exactly once in production order, PostgreSQL's detections are the reference model's
over that order, the S3 files hold exactly those detections 50 per file, and nothing is dead.
"""

from __future__ import annotations

import csv
import io
import signal
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest

from chunk_contract import layout
from infra.local.stack import REPO_ROOT, LocalServices, poll_until
from spark_detector.engine.rules import THRESHOLD_ENV, Thresholds
from tests.reference_model import ACTION_TYPES
from tests.support.workers import assert_applied_in_production_order

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ROWS, ROWS_PER_CHUNK, SEED = 9_000, 300, 3
CHUNKS = ROWS // ROWS_PER_CHUNK
THRESHOLDS = {"upgrade_min_total": 1000, "child_min_count": 6, "dei_min_female": 3}
HEADER = ["YStartTime", "detectionTime", "patternId", "ActionType", "customerName",
          "MerchantId"]


def query(url: str, sql: str) -> list[tuple]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(sql)
        rows = cur.fetchall()
    conn.close()
    return rows


def queue_depth(sqs, url: str) -> int:
    attrs = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                      "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return sum(int(v) for v in attrs.values())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("banksim")
    subprocess.run([sys.executable, "-m", "producer", "generate", "--out", str(out),
                    "--rows", str(ROWS), "--seed", str(SEED)], cwd=REPO_ROOT, check=True,
                   capture_output=True)
    return out


def test_the_pipeline_detects_exactly_what_the_reference_model_does(
    tmp_path: Path, database_url: str, data: Path
):
    with LocalServices.start(tmp_path / "stack", database_url=database_url) as stack:
        s3, sqs = stack.clients()
        env = stack.env(WORKER_WAIT_TIME_SECONDS="1",
                        **{THRESHOLD_ENV[k]: str(v) for k, v in THRESHOLDS.items()})
        worker_log = tmp_path / "worker.log"
        with worker_log.open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "spark_detector", "run", "--drain"], cwd=REPO_ROOT,
                env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            producer = subprocess.run(
                [sys.executable, "-m", "producer", "stream", str(data / "transactions.csv"),
                 "--importance", str(data / "CustomerImportance.csv"), "--interval", "0",
                 "--rows-per-chunk", str(ROWS_PER_CHUNK)],
                cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
            assert producer.returncode == 0, producer.stderr

            def all_applied():
                try:
                    return query(database_url, "SELECT count(*) FROM processed_chunks")[0][0] \
                        >= CHUNKS
                except psycopg2.errors.UndefinedTable:
                    return False

            poll_until(all_applied, 240, "every chunk applied", process=worker, log=worker_log,
                       every=0.5, tail=3000)
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=180) == 0, worker_log.read_text()[-3000:]
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()

        # Every chunk applied exactly once, in a gap-free apply order.
        chunk_keys = sorted(o["Key"] for o in s3.list_objects_v2(
            Bucket=stack.bucket, Prefix="stream_chunks/")["Contents"])
        assert len(chunk_keys) == CHUNKS
        applied = query(database_url,
                        "SELECT apply_order, rows_good + rows_rejected"
                        " FROM processed_chunks ORDER BY apply_order")
        assert [a for a, _ in applied] == list(range(1, CHUNKS + 1))
        assert sum(rows for _, rows in applied) == ROWS
        assert query(database_url, "SELECT count(*) FROM rejected_chunks") == [(0,)]

        # In production order, with exactly the reference model's rows and detections: the
        # rules in plain Python over the files as stored (not the worker's parser).
        stored = {key: s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read()
                  for key in chunk_keys}
        importance = s3.get_object(Bucket=stack.bucket, Key=layout.REFERENCE_KEY)["Body"].read()
        expected = [(p, ACTION_TYPES[p], m, c, k) for _, p, m, c, k in
                    assert_applied_in_production_order(database_url, stored, importance,
                                                       thresholds=Thresholds(**THRESHOLDS))]
        assert {d[0] for d in expected} == {"PatId1", "PatId2", "PatId3"}  # the test has teeth
        assert len(expected) > 50  # at least one full file and a drained partial one
        assert query(database_url, "SELECT pattern_id, action_type FROM detected_patterns"
                                   " ORDER BY seq") == [d[:2] for d in expected]

        # The S3 files hold exactly those detections, 50 per file, the last one drained.
        file_keys = sorted(o["Key"] for o in s3.list_objects_v2(
            Bucket=stack.bucket, Prefix="detected_patterns/")["Contents"])
        rows: list[list[str]] = []
        for n, key in enumerate(file_keys, start=1):
            assert key == f"detected_patterns/detections-{n:08d}.csv"
            body = s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read().decode()
            header, *lines = list(csv.reader(io.StringIO(body)))
            assert header == HEADER
            assert len(lines) == (50 if n < len(file_keys) else len(expected) - 50 * (n - 1))
            rows += lines
        assert [(r[2], r[3], r[5], r[4]) for r in rows] == [d[:4] for d in expected]
        assert all(r[0].endswith("+05:30") and r[1].endswith("+05:30") for r in rows)
        assert query(database_url, "SELECT count(*) FROM detected_patterns"
                                   " WHERE file_no IS NULL OR s3_key IS NULL") == [(0,)]

        # Nothing dead, nothing left.
        assert queue_depth(sqs, stack.resources.dlq_url) == 0
        assert queue_depth(sqs, stack.resources.trigger_failures_queue_url) == 0
        assert queue_depth(sqs, stack.resources.queue_url) == 0
