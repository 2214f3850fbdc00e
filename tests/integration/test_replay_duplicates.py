"""A replay of a live run in which a second chunk carried a settled sequence number (the
in-process Worker rejected it as a duplicate): in recorded order and in key order, the
replay rejects it as the live run did and applies every number once."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from chunk_contract.layout import CHUNK_PREFIX, chunk_key
from infra.local import postgres
from tests.support.replays import query, replay
from tests.support.workers import (
    applied_order,
    committed_detections,
    expected_detections,
    expected_detections_in_order,
    make_worker,
    run_until_idle,
    split_chunks,
)

pytestmark = pytest.mark.spark

CHUNKS = "SELECT chunk_key, seq, rows_good FROM processed_chunks ORDER BY apply_order"
REJECTED = "SELECT chunk_key, seq, duplicate_of FROM rejected_chunks ORDER BY chunk_key"
MARKS = "SELECT seq, outcome, chunk_key, late_chunk_key FROM sequence_marks ORDER BY seq"
DETECTIONS = ("SELECT seq, pattern_id, merchant_id, customer_name, chunk_key"
              " FROM detected_patterns ORDER BY seq")


def test_a_replay_rejects_a_duplicate_number_as_the_live_run_did(
        spark, weights, dataset, resources, migrated_database_url, database_url,
        postgres_server_url):
    transactions, importance = dataset
    chunks = dict(list(split_chunks(transactions, 1000).items())[:4])
    keys = sorted(chunks)
    # the copy sorts before the original: in key order it is the one that takes number 2
    copy = chunk_key(CHUNK_PREFIX, 2, datetime(2026, 1, 1, tzinfo=UTC))
    resources.upload({**chunks, copy: chunks[keys[1]],
                      "reference/CustomerImportance.csv": importance})
    resources.enqueue(keys)
    worker = make_worker(resources, migrated_database_url, spark, weights)
    run_until_idle(worker)
    resources.enqueue([copy])  # the copy's event comes after the original was applied
    run_until_idle(worker)
    worker.close()
    assert applied_order(migrated_database_url) == keys
    assert query(migrated_database_url, REJECTED) == [(copy, 2, keys[1])]

    replay(spark, worker.settings, resources, into=database_url)
    for sql in (CHUNKS, REJECTED, MARKS, DETECTIONS):
        assert query(database_url, sql) == query(migrated_database_url, sql), sql

    # the live database gone (an empty one): key order, the copy first in it
    with postgres.scratch_database(postgres_server_url, "gone") as gone:
        replay(spark, replace(worker.settings, database_url=gone), resources,
               into="by_keys", order="keys")
        in_key_order = [keys[0], copy, keys[2], keys[3]]  # chunk 2's rows once: the copy's
        assert query(gone, "SELECT chunk_key, seq FROM processed_chunks ORDER BY apply_order",
                     "by_keys") == list(zip(in_key_order, (1, 2, 3, 4), strict=True))
        assert query(gone, REJECTED, "by_keys") == [(keys[1], 2, copy)]
        assert query(gone, DETECTIONS, "by_keys") == expected_detections_in_order(
            {**chunks, copy: chunks[keys[1]]}, importance, in_key_order)
    assert committed_detections(migrated_database_url) == expected_detections(chunks, importance)
