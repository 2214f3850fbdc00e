"""`replay` against a real live run: moto server, real PostgreSQL, the session's SparkSession.

The live run is the in-process Worker draining 35 chunks (one with bad rows, one rejected
whole), enqueued out of order, the last one uploaded by hand (no sequence number), so that the
recorded apply order is not the key order. Then:
the replay with the live settings equals it key for key and chunk for chunk; a replay with
other rules and another CustomerImportance equals the reference model run with the same
changes; neither touches the live tables or the live detection prefix; --replace is refused
while a worker runs and rebuilds the live run exactly once it has stopped.
"""

from __future__ import annotations

import csv
import io
import random
from dataclasses import replace
from urllib.parse import urlsplit

import pytest

from infra.local import postgres
from producer.generate import generate
from spark_detector import db
from spark_detector.config import WorkerSettings
from spark_detector.engine.rules import Thresholds
from spark_detector.ops.replay_plan import ADDED, MOVED, REMOVED, ReplayRefused
from spark_detector.spark.batch_result import weight_table
from spark_detector.spark.reference_weights import compute_weights
from spark_detector.worker.loop import Worker
from spark_detector.worker.spark_runtime import SparkAggregator
from tests.support.replays import fetch_spec, query, replay
from tests.support.workers import (
    THRESHOLDS,
    AwsResources,
    applied_order,
    expected_detections_in_order,
    split_chunks,
)

pytestmark = pytest.mark.spark

BAD_HEADER = "stream_chunks/chunk-00000035-20261127T000100.000Z.csv"
HAND_UPLOADED = "stream_chunks/by-hand.csv"  # no sequence number: applied as it arrives


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[dict[str, bytes], bytes]:
    out = tmp_path_factory.mktemp("banksim")
    generate(out, rows=20_000, seed=3)
    chunks = split_chunks((out / "transactions.csv").read_bytes(), 600)
    first = sorted(chunks)[0]
    # rows the worker rejects alone (a negative amount, three fields) ...
    chunks[first] += b"0,'C1','4','F','1','M1','1','es_food',-5,0\n1,2,3\n"
    # ... and a chunk it rejects whole (no merchant column)
    chunks[BAD_HEADER] = chunks[first].replace(b"merchant", b"shop", 1)
    chunks[HAND_UPLOADED] = chunks[sorted(chunks)[1]]
    return chunks, (out / "CustomerImportance.csv").read_bytes()


@pytest.fixture(scope="module")
def live(spark, moto_endpoint, postgres_server_url, migrated_template, dataset):
    """The live run: the Worker drains the chunks, writes every detection file, stops."""
    chunks, importance = dataset
    resources = AwsResources.create(moto_endpoint)
    resources.upload(chunks)
    resources.s3.put_object(Bucket=resources.bucket, Key="reference/CustomerImportance.csv",
                            Body=importance)
    keys = sorted(k for k in chunks if k != HAND_UPLOADED)
    random.Random(12).shuffle(keys)
    resources.enqueue([*keys, HAND_UPLOADED])
    with postgres.scratch_database(postgres_server_url, "live",
                                   template=migrated_template) as url:
        settings = WorkerSettings(bucket=resources.bucket, queue_url=resources.queue_url,
                                  database_url=url, wait_time_seconds=0,
                                  batch_window_seconds=0.2, max_batch_chunks=10,
                                  thresholds=THRESHOLDS)
        spec = fetch_spec(resources)
        weights = weight_table(compute_weights(importance, "live")[0])
        aggregator = SparkAggregator(spark, spec, weights)
        worker = Worker(settings, s3=resources.s3, sqs=resources.sqs,
                        connect=lambda: db.connect(url), aggregate=aggregator.aggregate)
        worker.start()
        for _ in range(100):
            if worker.run_batch() is None:
                break
        worker.flush_partial("drain")
        worker.close()
        yield settings, resources








DETECTIONS = ("SELECT seq, pattern_id, merchant_id, customer_name, chunk_key, apply_order,"
              " txn_count, amount_sum, avg_weight, p90_count, p10_weight, female, male"
              " FROM detected_patterns ORDER BY seq")
CHUNKS = ("SELECT chunk_key, apply_order, rows_good, rows_rejected, pairs, detections"
          " FROM processed_chunks ORDER BY apply_order")
REJECTED = "SELECT chunk_key, reason FROM rejected_chunks ORDER BY chunk_key"


def live_snapshot(settings: WorkerSettings, resources: AwsResources) -> dict:
    """Everything of the live run a replay must leave alone."""
    url = settings.database_url
    objects = resources.s3.list_objects_v2(Bucket=resources.bucket)["Contents"]
    return {
        "detections": query(url, "SELECT *, xmin::text FROM detected_patterns ORDER BY seq"),
        "chunks": query(url, "SELECT *, xmin::text FROM processed_chunks ORDER BY apply_order"),
        "rejected": query(url, REJECTED),
        "state": query(url, "SELECT count(*), sum(txn_count), max(xmin::text::bigint)"
                            " FROM pair_state"),
        "files": query(url, "SELECT * FROM outbox_files ORDER BY file_no"),
        "objects": sorted((o["Key"], o["ETag"]) for o in objects
                          if not o["Key"].startswith("whatif/")),
    }


def test_replay_with_the_live_settings_equals_the_live_run(
        spark, live, dataset, database_url, tmp_path):
    settings, resources = live
    before = live_snapshot(settings, resources)
    order = applied_order(settings.database_url)
    # the hand-uploaded chunk, first in key order, came later: the orders differ
    assert len(order) >= 30 and order.index(HAND_UPLOADED) > 0 and order != sorted(order)

    report = replay(spark, settings, resources, into=database_url,
                    compare=tmp_path / "diff.csv")

    assert query(database_url, DETECTIONS) == query(settings.database_url, DETECTIONS)
    assert query(database_url, CHUNKS) == query(settings.database_url, CHUNKS)
    assert query(database_url, REJECTED) == query(settings.database_url, REJECTED) == [
        (BAD_HEADER, query(settings.database_url, REJECTED)[0][1])]
    assert query(database_url, "SELECT rows_rejected FROM processed_chunks"
                               " WHERE rows_rejected > 0") == [(2,)]
    detections = query(database_url, DETECTIONS)
    assert {d[1] for d in detections} == {"PatId1", "PatId2", "PatId3"}
    assert report.chunks_applied == len(order) and report.plan.skipped_rejected == (BAD_HEADER,)
    assert report.changes == []
    assert (tmp_path / "diff.csv").read_text().count("\n") == 1  # the header alone
    # nothing left for a worker to publish from the replay database
    assert query(database_url, "SELECT count(*) FROM outbox_files WHERE written_at IS NULL"
                               " OR s3_key IS NOT NULL") == [(0,)]
    assert query(database_url, "SELECT count(*) FROM detected_patterns"
                               " WHERE file_no IS NULL") == [(0,)]
    assert live_snapshot(settings, resources) == before


def test_a_what_if_replay_equals_the_reference_model_with_the_same_changes(
        spark, live, dataset, tmp_path):
    settings, resources = live
    chunks, importance = dataset
    before = live_snapshot(settings, resources)
    # Another CustomerImportance: every second row's weight halved, the last 1,000 rows gone.
    header, *rows = importance.decode().splitlines()
    changed_rows = []
    for i, row in enumerate(rows[:-1000]):
        source, target, weight, category, fraud = row.split(",")
        if i % 2:
            weight = str(float(weight) / 2)
        changed_rows.append(",".join([source, target, weight, category, fraud]))
    other_importance = ("\n".join([header, *changed_rows]) + "\n").encode()
    (tmp_path / "ci.csv").write_bytes(other_importance)
    rules = ["PATID1_MIN_TOTAL=1500", "PATID1_WEIGHT_PERCENTILE=0.2", "PATID2_MIN_COUNT=6",
             "PATID3_MIN_FEMALE=3"]
    what_if = Thresholds(upgrade_min_total=1500, upgrade_weight_percentile=0.2,
                         child_min_count=6, dei_min_female=3)

    report = replay(spark, settings, resources, into="whatif", rules=tuple(rules),
                    importance=str(tmp_path / "ci.csv"), publish="whatif/run1/",
                    compare=tmp_path / "diff.csv")

    order = applied_order(settings.database_url)
    expected = expected_detections_in_order(chunks, other_importance, order, what_if)
    replayed = query(settings.database_url, "SELECT seq, pattern_id, merchant_id,"
                     " customer_name, chunk_key FROM detected_patterns ORDER BY seq", "whatif")
    assert replayed == expected
    assert report.rules == {"PATID1_MIN_TOTAL": "1500", "PATID1_WEIGHT_PERCENTILE": "0.2",
                            "PATID2_MIN_COUNT": "6", "PATID3_MIN_FEMALE": "3"}
    # The diff: what the reference fires and the live run did not, and the other way round.
    live_fired = {(p, m, c): k for _, p, m, c, k in expected_detections_in_order(
        chunks, importance, order)}
    what_if_fired = {(p, m, c): k for _, p, m, c, k in expected}
    diff = list(csv.DictReader(io.StringIO((tmp_path / "diff.csv").read_text())))
    by_change = {change: {(r["pattern_id"], r["merchant_id"], r["customer_name"])
                          for r in diff if r["change"] == change}
                 for change in (ADDED, REMOVED, MOVED)}
    assert by_change[ADDED] == what_if_fired.keys() - live_fired.keys() != set()
    assert by_change[REMOVED] == live_fired.keys() - what_if_fired.keys()
    assert by_change[MOVED] == {key for key in live_fired.keys() & what_if_fired.keys()
                                if live_fired[key] != what_if_fired[key]}
    assert len(diff) == len(report.changes) == sum(len(v) for v in by_change.values())
    # The detection files went under the other prefix, 50 each, in detection order.
    files = resources.keys("whatif/run1/")
    assert files == report.files_published and len(files) == -(-len(expected) // 50)
    rows = [r for key in files for r in csv.DictReader(io.StringIO(resources.read(key).decode()))]
    assert [(r["patternId"], r["MerchantId"], r["customerName"]) for r in rows] == [
        (p, m, c) for _, p, m, c, _ in expected]
    assert live_snapshot(settings, resources) == before


def test_replace_is_refused_while_a_worker_runs_and_rebuilds_the_live_run_once_stopped(
        spark, live, postgres_server_url):
    settings, resources = live
    live_name = urlsplit(settings.database_url).path.lstrip("/")
    with postgres.scratch_database(postgres_server_url, "copy", template=live_name) as url:
        copy = replace(settings, database_url=url)
        before = query(url, DETECTIONS)
        worker = Worker(copy, s3=resources.s3, sqs=resources.sqs,
                        connect=lambda: db.connect(url), aggregate=lambda keys: None)
        worker.start()  # holds the worker lock from now on

        with pytest.raises(ReplayRefused, match="worker is running"):
            replay(spark, copy, resources, replace=True)
        assert query(url, DETECTIONS) == before

        worker.close()
        report = replay(spark, copy, resources, replace=True)

        assert query(url, DETECTIONS) == before
        assert report.live_files_differing == [] and report.live_files_adopted == len(
            resources.keys("detected_patterns/"))
        assert query(url, "SELECT count(*) FROM outbox_files WHERE written_at IS NULL") == [(0,)]


def test_a_worker_cannot_start_while_replace_holds_the_database(live, migrated_database_url):
    settings, resources = live
    rebuild = db.connect(migrated_database_url)
    try:
        assert db.try_rebuild_lock(rebuild)
        worker = Worker(replace(settings, database_url=migrated_database_url),
                        s3=resources.s3, sqs=resources.sqs,
                        connect=lambda: db.connect(migrated_database_url),
                        aggregate=lambda keys: None)
        with pytest.raises(db.RebuildInProgress):
            worker.start()
    finally:
        rebuild.close()
    worker.start()  # the rebuild is over
    worker.close()


def test_the_live_tables_are_refused_as_a_replay_target(spark, live):
    settings, resources = live
    with pytest.raises(ReplayRefused, match="live tables"):
        replay(spark, settings, resources, into=settings.database_url)
    with pytest.raises(ReplayRefused, match="live detection prefix"):
        replay(spark, settings, resources, into="whatif2", publish="detected_patterns/")


def test_the_command_line_reaches_the_replay(live, aws_credentials, monkeypatch, capsys):
    settings, resources = live
    from spark_detector.__main__ import main

    monkeypatch.setenv("BUCKET", resources.bucket)
    monkeypatch.setenv("QUEUE_URL", resources.queue_url)
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    assert main(["replay", "--into", "x", "--rule", "PATID7=1"]) == 2
    assert "unknown rule PATID7" in capsys.readouterr().err
    assert main(["replay", "--replace", "--rule", "PATID2_MIN_COUNT=3"]) == 3
    assert "refused" in capsys.readouterr().err


@pytest.mark.parametrize(("rule", "line"), [
    ("PATID2_MIN_COUNT=0", "replay: PATID2_MIN_COUNT=0 is out of range: allowed [1, inf)"),
    ("PATID1_COUNT_PERCENTILE=1.5",
     "replay: PATID1_COUNT_PERCENTILE=1.5 is out of range: allowed (0, 1)"),
])
def test_a_rule_the_worker_would_refuse_is_refused_in_one_line_with_exit_2(
        live, aws_credentials, monkeypatch, capsys, rule, line):
    settings, resources = live
    from spark_detector.__main__ import main

    monkeypatch.setenv("BUCKET", resources.bucket)
    monkeypatch.setenv("QUEUE_URL", resources.queue_url)
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    assert main(["replay", "--into", "whatif_range", "--rule", rule]) == 2
    said = [s for s in capsys.readouterr().err.splitlines() if not s.startswith("{")]
    assert said == [line]  # one line, after any JSON log lines


def test_a_chunk_over_the_byte_limit_is_rejected_whole_without_being_read(
        spark, live, database_url):
    settings, resources = live
    tiny = replace(settings, max_chunk_bytes=1)

    report = replay(spark, tiny, resources, into=database_url, order="keys")

    assert report.chunks_applied == 0 and report.chunks_rejected == len(report.plan.keys) > 30
    reasons = [r for _, r in query(database_url, REJECTED) if r.startswith("too large")]
    assert len(reasons) == report.chunks_rejected
    assert query(database_url, "SELECT count(*) FROM detected_patterns") == [(0,)]
