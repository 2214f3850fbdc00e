"""The backfill enqueues the chunks whose S3 event was lost. Its listing starts at the chunk the
stream waits for, so its cost follows what is new, not the archive's retention; `--full`
lists the whole prefix, page by page (docs/operations.md)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from chunk_contract.layout import CHUNK_PREFIX, chunk_key
from chunk_contract.message import ChunkMessage
from spark_detector import db
from spark_detector.config import WorkerSettings
from spark_detector.engine import state as detection_state
from spark_detector.ops.backfill import backfill
from tests.reference_model import chunk_from_rows

START = datetime(2026, 11, 27, tzinfo=UTC)


def queued_keys(resources) -> list[str]:
    keys = []
    while batch := resources.sqs.receive_message(QueueUrl=resources.queue_url,
                                                 MaxNumberOfMessages=10).get("Messages", []):
        keys += [ChunkMessage.from_json(m["Body"]).key for m in batch]
    return sorted(keys)


def test_the_backfill_lists_from_the_stream_position_and_full_lists_everything(
        resources, migrated_database_url, caplog):
    keys = [chunk_key(CHUNK_PREFIX, n, START + timedelta(seconds=n)) for n in range(1, 9)]
    hand = f"{CHUNK_PREFIX}a-hand-upload.csv"  # sorts before the producer's names
    resources.upload({key: b"step\n" for key in [*keys, hand]})
    conn = db.connect(migrated_database_url)
    for key in keys[:6]:
        detection_state.apply_chunk(conn, detection_state.ChunkRef(key),
                                    chunk_from_rows(key, [("C1", "M1", "5", "F")]),
                                    y_start_time=START)
    settings = WorkerSettings(bucket=resources.bucket, queue_url=resources.queue_url,
                              database_url=migrated_database_url)

    with caplog.at_level(logging.INFO, logger="spark_detector.ops.backfill"):
        enqueued = backfill(conn, resources.s3, resources.sqs, settings)

    assert enqueued == keys[6:]
    assert queued_keys(resources) == keys[6:]
    (line,) = [r for r in caplog.records if r.getMessage() == "backfill"]
    assert (line.listed, line.enqueued, line.start_after) == (
        2, 2, f"{CHUNK_PREFIX}chunk-00000006-~")

    assert backfill(conn, resources.s3, resources.sqs, settings, full=True) == [
        hand, *keys[6:]]
    assert queued_keys(resources) == [hand, *keys[6:]]
    conn.close()
