"""The worker reads exactly the version of a chunk its message names (the GET carries the
message's ETag): an object overwritten after its event is not read in its place. In-process:
moto server, real PostgreSQL, the session's SparkSession."""

from __future__ import annotations

import psycopg2
import pytest

from chunk_contract.message import ChunkMessage
from tests.support.workers import (
    assert_applied_in_production_order,
    make_worker,
    run_until_idle,
    split_chunks,
)

pytestmark = pytest.mark.spark


def test_a_chunk_overwritten_after_its_event_is_applied_in_its_current_version_only(
        spark, weights, dataset, resources, migrated_database_url):
    transactions, importance = dataset
    bodies = list(split_chunks(transactions, 500).values())
    chunks = dict(list(split_chunks(transactions, 500).items())[:2])
    first, second = sorted(chunks)
    resources.upload(chunks)
    stale = resources.s3.head_object(Bucket=resources.bucket, Key=first)["ETag"].strip('"')
    # The event of chunk 1's first version is in the queue; then the key is overwritten, and
    # the event of the new version is lost (chunk 2's event arrives normally).
    resources.send_raw(ChunkMessage(bucket=resources.bucket, key=first,
                                    size=len(chunks[first]), etag=stale).to_json())
    resources.s3.put_object(Bucket=resources.bucket, Key=first, Body=bodies[5])
    current = resources.s3.head_object(Bucket=resources.bucket, Key=first)["ETag"].strip('"')
    resources.enqueue([second])
    worker = make_worker(resources, migrated_database_url, spark, weights,
                         retry_delay_seconds=0)

    run_until_idle(worker)

    # the current version of chunk 1, then chunk 2: production order, the reference's rows
    assert_applied_in_production_order(migrated_database_url,
                                       {first: bodies[5], second: chunks[second]}, importance)
    with psycopg2.connect(migrated_database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT etag, rows_good + rows_rejected FROM processed_chunks"
                    " WHERE chunk_key = %s", (first,))
        assert cur.fetchone() == (current, bodies[5].count(b"\n") - 1)  # its data lines
        cur.execute("SELECT chunk_key, etag, kind FROM chunk_conflicts")
        assert cur.fetchall() == [(first, stale, "superseded")]
        cur.execute("SELECT count(*) FROM chunk_failures")  # no failure charged for it
        assert cur.fetchone() == (0,)
    assert resources.depth() == 0 and resources.depth(resources.dlq_url) == 0
    worker.close()
