"""Schema migrations: ordered, recorded, idempotent, safe when two workers start together."""

from __future__ import annotations

import threading

from spark_detector import db
from tests.support.locks import held_until_contended


def test_migrate_applies_every_file_once_and_records_the_version(database_url):
    conn = db.connect(database_url)
    try:
        latest = db.available_migrations()[-1].version
        assert db.schema_version(conn) == 0
        assert db.migrate(conn) == latest
        assert db.migrate(conn) == latest
        with conn.cursor() as cur:
            cur.execute("SELECT version FROM schema_migrations ORDER BY version")
            assert [v for (v,) in cur.fetchall()] == [
                m.version for m in db.available_migrations()
            ]
            # the seed implementation's queries run unchanged
            cur.execute("SELECT customer, merchant, txn_count, avg_weight, avg_amount, txn_rank,"
                        " weight_rank, F, M, patternId, actionType, chunk_name, processed_at"
                        " FROM detected_patterns")
            cur.execute("SELECT chunk_name FROM processed_chunks")
            cur.execute("SELECT seq, latency_ms FROM detection_latency")
        conn.rollback()
    finally:
        conn.close()


def test_two_workers_migrating_at_once_both_succeed(database_url):
    results: list[int] = []
    errors: list[BaseException] = []

    def start_worker() -> None:
        conn = db.connect(database_url)
        try:
            results.append(db.migrate(conn))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=start_worker) for _ in range(2)]
    # both inside migrate at once: each waits for the migration lock before it goes on
    with held_until_contended(database_url, db.MIGRATION_LOCK, waiters=2):
        for thread in threads:
            thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results == [db.available_migrations()[-1].version] * 2
    conn = db.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT version, count(*) FROM schema_migrations GROUP BY 1 ORDER BY 1")
            assert cur.fetchall() == [(m.version, 1) for m in db.available_migrations()]
        conn.rollback()
    finally:
        conn.close()
