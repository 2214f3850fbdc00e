"""Replays of a live run with late, skipped and dead-lettered chunks, through the real
commands (docs/rebuild-and-what-if.md).

The live run (the in-process Worker, 16 chunks of 1,000 rows): an operator skips chunks 3
and 9 with `skip-seq`; chunks 6 and 12 fail at their apply until the worker dead-letters
them; then chunk 3 turns up after all and chunk 6 is redriven from the DLQ: both are applied
late. Then, as processes: `replay --into` in recorded order reproduces it; `replay
--replace`, killed half-way, leaves a visible unfinished rebuild that keeps workers out, and
a second run finishes it.
"""

from __future__ import annotations

import os
import signal
from urllib.parse import urlsplit

import pytest

from infra.local import postgres
from spark_detector import db
from spark_detector.config import WorkerSettings
from spark_detector.spark.batch_result import weight_table
from spark_detector.spark.reference_weights import compute_weights
from spark_detector.worker.loop import Worker
from spark_detector.worker.spark_runtime import SparkAggregator
from tests.support.replays import fetch_spec, query
from tests.support.workers import (
    THRESHOLDS,
    AwsResources,
    applied_order,
    command,
    committed_detections,
    error_lines,
    expected_detections_in_order,
    run_until_idle,
    split_chunks,
    worker_env,
)

pytestmark = pytest.mark.spark

SKIPPED_THEN_LATE, DEAD_THEN_REDRIVEN, SKIPPED, DEAD = 3, 6, 9, 12

CHUNKS = ("SELECT chunk_key, apply_order, seq, rows_good, rows_rejected, pairs, detections"
          " FROM processed_chunks ORDER BY apply_order")
DETECTIONS = ("SELECT seq, pattern_id, merchant_id, customer_name, chunk_key, apply_order,"
              " txn_count, amount_sum, avg_weight, p90_count, p10_weight, female, male"
              " FROM detected_patterns ORDER BY seq")
MARKS = ("SELECT seq, outcome, chunk_key, reason, decided_by, late_outcome, late_chunk_key"
         " FROM sequence_marks ORDER BY seq")
STATE = ("SELECT merchant, customer, txn_count, amount_sum, weight_sum, weighted_count, gender,"
         " first_apply_order, last_apply_order FROM pair_state ORDER BY merchant, customer")
POSITION = "SELECT next_seq FROM stream_position"
FILES = ("SELECT file_no, first_seq, last_seq, detections, s3_key, written_at IS NOT NULL"
         " FROM outbox_files ORDER BY file_no")
FAILURES = ("SELECT chunk_key, attempts, last_error, dead_lettered_at IS NOT NULL"
            " FROM chunk_failures ORDER BY chunk_key")
EVERYTHING = (CHUNKS, DETECTIONS, MARKS, STATE, POSITION)


@pytest.fixture(scope="module")
def live(spark, moto_endpoint, postgres_server_url, migrated_template, dataset):
    transactions, importance = dataset
    chunks = dict(list(split_chunks(transactions, 1000).items())[:16])
    keys = sorted(chunks)

    def key(seq: int) -> str:
        return keys[seq - 1]

    resources = AwsResources.create(moto_endpoint, max_receive_count=50)
    resources.upload({k: v for k, v in chunks.items()
                      if k not in (key(SKIPPED_THEN_LATE), key(SKIPPED))})
    resources.s3.put_object(Bucket=resources.bucket, Key="reference/CustomerImportance.csv",
                            Body=importance)
    with postgres.scratch_database(postgres_server_url, "live",
                                   template=migrated_template) as url:
        env = worker_env(resources, url)
        for seq, who in ((SKIPPED_THEN_LATE, "alice"), (SKIPPED, "bob")):
            skipped = command(env, "skip-seq", str(seq), "--reason", f"producer lost chunk {seq}",
                              "--by", who)
            assert skipped.returncode == 0, skipped.stderr
        settings = WorkerSettings(bucket=resources.bucket, queue_url=resources.queue_url,
                                  database_url=url, wait_time_seconds=0,
                                  batch_window_seconds=0.2, max_batch_chunks=4,
                                  retry_delay_seconds=0, max_chunk_failures=3,
                                  thresholds=THRESHOLDS)
        aggregator = SparkAggregator(spark, fetch_spec(resources),
                                     weight_table(compute_weights(importance, "live")[0]))
        worker = Worker(settings, s3=resources.s3, sqs=resources.sqs,
                        connect=lambda: db.connect(url), aggregate=aggregator.aggregate)
        worker.start()
        resources.enqueue(k for k in keys if k not in (key(SKIPPED_THEN_LATE), key(SKIPPED)))
        os.environ["WORKER_RAISE"] = ",".join(
            f"apply_chunk@{key(seq).split('/')[-1]}" for seq in (DEAD_THEN_REDRIVEN, DEAD))
        try:
            run_until_idle(worker)
        finally:
            del os.environ["WORKER_RAISE"]
        assert resources.depth(resources.dlq_url) == 2
        resources.upload({key(SKIPPED_THEN_LATE): chunks[key(SKIPPED_THEN_LATE)]})
        resources.enqueue([key(SKIPPED_THEN_LATE)])
        assert resources.redrive(key(DEAD_THEN_REDRIVEN)) == 1
        run_until_idle(worker)
        worker.flush_partial("drain")
        worker.close()
        yield url, env, key, chunks, importance, resources


def test_the_live_run_applies_late_chunks_and_keeps_the_audit_trail_of_their_numbers(live):
    url, _, key, chunks, importance, _ = live
    on_time = [key(n) for n in range(1, 17)
               if n not in (SKIPPED_THEN_LATE, DEAD_THEN_REDRIVEN, SKIPPED, DEAD)]
    # the late chunks where they arrived, after the chunks that followed them
    order = [*on_time, key(SKIPPED_THEN_LATE), key(DEAD_THEN_REDRIVEN)]
    assert applied_order(url) == order
    assert committed_detections(url) == expected_detections_in_order(chunks, importance, order)
    failed = "InjectedFailure: injected failure at apply_chunk for "
    marks = {row[0]: row[1:] for row in query(url, MARKS)}
    assert marks[SKIPPED_THEN_LATE] == (
        "skipped", None, f"producer lost chunk {SKIPPED_THEN_LATE}", "alice",
        "applied", key(SKIPPED_THEN_LATE))
    assert marks[SKIPPED] == ("skipped", None, f"producer lost chunk {SKIPPED}", "bob",
                              None, None)
    assert marks[DEAD_THEN_REDRIVEN] == (
        "dead_lettered", key(DEAD_THEN_REDRIVEN), failed + key(DEAD_THEN_REDRIVEN), None,
        "applied", key(DEAD_THEN_REDRIVEN))
    assert marks[DEAD] == ("dead_lettered", key(DEAD), failed + key(DEAD), None, None, None)
    assert query(url, POSITION) == [(17,)]


def test_a_replay_in_recorded_order_reproduces_the_live_run(live, database_url, tmp_path):
    url, env, *_ = live

    result = command(env, "replay", "--into", database_url, "--compare",
                     str(tmp_path / "diff.csv"))

    assert result.returncode == 0, result.stderr[-3000:]
    assert "the replay equals the live run, key for key and chunk for chunk" in result.stdout
    for sql in EVERYTHING:
        assert query(database_url, sql) == query(url, sql), sql
    assert (tmp_path / "diff.csv").read_text().count("\n") == 1  # the header alone


def test_an_interrupted_replace_keeps_workers_out_until_a_second_run_finishes_it(
        live, postgres_server_url):
    url, env, *_ = live
    live_name = urlsplit(url).path.lstrip("/")
    with postgres.scratch_database(postgres_server_url, "rebuild", template=live_name) as copy:
        env = {**env, "DATABASE_URL": copy}
        before = {sql: query(copy, sql) for sql in (*EVERYTHING, FILES, FAILURES)}

        killed = command({**env, "WORKER_FAILPOINT": "replay_apply:5"}, "replay", "--replace")
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]

        # nothing live changed, and the unfinished rebuild is visible and keeps workers out
        assert {sql: query(copy, sql) for sql in before} == before
        status = command(env, "status")
        assert status.returncode == 0, status.stderr[-3000:]
        assert status.stdout.startswith("REBUILD IN PROGRESS: a rebuild of this database")
        refused = command(env, "run", timeout=120)
        assert refused.returncode == 5, refused.stderr[-3000:]
        (said,) = error_lines(refused)
        assert said.startswith("spark_detector: refusing to start: a rebuild of this database")
        assert "run `python -m spark_detector replay --replace` again" in said
        skip = command(env, "skip-seq", "20", "--reason", "x")
        assert skip.returncode == 5 and len(error_lines(skip)) == 1

        finished = command(env, "replay", "--replace")

        assert finished.returncode == 0, finished.stderr[-3000:]
        assert '"finishing an unfinished rebuild"' in finished.stderr
        assert {sql: query(copy, sql) for sql in before} == before
        assert query(copy, "SELECT count(*) FROM rebuild_in_progress") == [(0,)]
        assert query(copy, "SELECT to_regnamespace('spark_detector_rebuild')") == [(None,)]
        assert not command(env, "status").stdout.startswith("REBUILD")


def test_a_replay_that_fails_says_why_in_one_line(live, database_url):
    url, env, key, *_ = live
    failing = {**env, "WORKER_RAISE": f"apply_chunk@{key(2).split('/')[-1]}"}

    result = command(failing, "replay", "--into", database_url)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"replay failed: InjectedFailure: injected failure at apply_chunk for {key(2)}")
    assert query(url, "SELECT count(*) FROM processed_chunks") == [(14,)]  # live untouched
