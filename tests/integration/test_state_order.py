"""Production order inside the engine: the apply transaction itself refuses a chunk whose
predecessor is not settled, so any number of workers apply in sequence order."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg2.extensions
import pytest

from spark_detector import db
from spark_detector.engine import state as detection_state
from spark_detector.engine.state import ChunkRef, OutOfTurn, apply_chunk, next_seq
from tests.reference_model import chunk_from_rows

Y_START = datetime(2026, 11, 27, 4, 0, tzinfo=UTC)


def key(seq: int) -> str:
    return f"stream_chunks/chunk-{seq:08d}-20261127T000000.000Z.csv"


@pytest.fixture
def conn(migrated_database_url: str) -> Iterator[psycopg2.extensions.connection]:
    connection = db.connect(migrated_database_url)
    yield connection
    connection.close()


def apply(conn, chunk_key: str) -> list:
    aggregates = chunk_from_rows(chunk_key, [("C1", "M1", "5.00", "F")])
    return apply_chunk(conn, ChunkRef(chunk_key), aggregates, y_start_time=Y_START)


def marks(conn) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute("SELECT seq, outcome, chunk_key, reason, decided_by FROM sequence_marks"
                    " ORDER BY seq")
        rows = cur.fetchall()
    conn.rollback()
    return rows


def test_a_chunk_waits_for_its_predecessor_and_nothing_changes_meanwhile(conn):
    with pytest.raises(OutOfTurn, match="chunk 2 must wait for chunk 1"):
        apply(conn, key(2))
    assert detection_state.chunk_status(conn, key(2)) is None
    apply(conn, key(1))
    apply(conn, key(2))
    assert next_seq(conn) == 3
    assert [m[:2] for m in marks(conn)] == [(1, "applied"), (2, "applied")]


def test_a_chunk_rejected_early_is_stepped_over_when_its_turn_comes(conn):
    assert detection_state.record_rejected_chunk(conn, ChunkRef(key(2)), "no header", "q/2")
    assert next_seq(conn) == 1  # rejecting early changes no state, so it need not wait
    apply(conn, key(1))
    assert next_seq(conn) == 3
    apply(conn, key(3))


def test_skip_seq_records_who_and_why_and_moves_the_stream_on(conn):
    apply(conn, key(1))
    assert detection_state.skip_seq(conn, 2, reason="lost upstream", decided_by="ops") == 3
    apply(conn, key(3))
    assert marks(conn)[1] == (2, "skipped", None, "lost upstream", "ops")
    with pytest.raises(detection_state.SeqAlreadySettled, match="already applied"):
        detection_state.skip_seq(conn, 3, reason="x", decided_by="ops")
    with pytest.raises(ValueError, match="reason"):
        detection_state.skip_seq(conn, 9, reason=" ", decided_by="ops")


def test_a_range_is_skipped_whole_or_not_at_all(conn):
    apply(conn, key(1))
    assert detection_state.skip_seq(conn, 3, reason="x", decided_by="ops") == 2
    with pytest.raises(detection_state.SeqAlreadySettled, match="3 is already skipped"):
        detection_state.skip_seq(conn, 2, through=4, reason="x", decided_by="ops")
    assert [m[:2] for m in marks(conn)] == [(1, "applied"), (3, "skipped")]  # 2 not skipped
    assert detection_state.skip_seq(conn, 4, through=5, reason="x", decided_by="ops") == 2
    assert detection_state.skip_seq(conn, 2, reason="x", decided_by="ops") == 6


def test_a_number_skipped_ahead_is_stepped_over_later(conn):
    assert detection_state.skip_seq(conn, 3, reason="never produced", decided_by="ops") == 1
    apply(conn, key(1))
    apply(conn, key(2))
    assert next_seq(conn) == 4


def migrate_before(cur, version: int) -> None:
    """The schema as the migrations before ``version`` left it, recorded as applied."""
    older = [m for m in db.available_migrations() if m.version < version]
    for m in older:
        cur.execute(m.sql)
    cur.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY,"
                " name text NOT NULL, applied_at timestamptz DEFAULT now())")
    cur.executemany("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    [(m.version, m.name) for m in older])


def late_marks(conn) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute("SELECT seq, late_outcome, late_chunk_key FROM sequence_marks"
                    " WHERE late_outcome IS NOT NULL ORDER BY seq")
        rows = cur.fetchall()
    conn.rollback()
    return rows


def test_a_dead_lettered_chunk_redriven_later_is_applied_late(conn):
    apply(conn, key(1))
    detection_state.settle_dead_lettered(conn, ChunkRef(key(2)), "kept failing")
    apply(conn, key(3))
    apply(conn, key(2))  # redriven from the DLQ by an operator: applied where it arrives
    with conn.cursor() as cur:
        cur.execute("SELECT chunk_key FROM processed_chunks ORDER BY apply_order")
        assert [k for (k,) in cur.fetchall()] == [key(1), key(3), key(2)]
    conn.rollback()
    # the dead-letter stays on record, the late apply beside it
    assert marks(conn)[1] == (2, "dead_lettered", key(2), "kept failing", None)
    assert late_marks(conn) == [(2, "applied", key(2))]
    assert next_seq(conn) == 4


def test_a_chunk_arriving_after_skip_seq_keeps_the_skips_audit_trail(conn):
    apply(conn, key(1))
    detection_state.skip_seq(conn, 2, reason="producer crashed", decided_by="alice")
    detection_state.skip_seq(conn, 3, reason="producer crashed", decided_by="alice")
    apply(conn, key(4))
    apply(conn, key(2))  # it turned up after all: applied late
    detection_state.record_rejected_chunk(conn, ChunkRef(key(3)), "no header", "q/3")
    assert marks(conn)[1:3] == [(2, "skipped", None, "producer crashed", "alice"),
                                (3, "skipped", None, "producer crashed", "alice")]
    assert late_marks(conn) == [(2, "applied", key(2)), (3, "rejected", key(3))]
    with pytest.raises(detection_state.SeqAlreadySettled, match="came late and was applied"):
        detection_state.skip_seq(conn, 2, reason="again", decided_by="bob")
    assert next_seq(conn) == 5


def test_the_migration_keeps_a_late_apply_recorded_before_it_apart_from_its_number(database_url):
    """Before migration 0006 a late apply overwrote its number's mark with 'applied'."""
    conn = db.connect(database_url)
    try:
        with conn.cursor() as cur:
            migrate_before(cur, 6)
            # applied 1, 2, 4, then 3 late (skipped meanwhile), as the old code left them
            for order, seq in enumerate((1, 2, 4, 3), start=1):
                cur.execute("INSERT INTO processed_chunks (chunk_key, apply_order, rows_good,"
                            " rows_rejected, pairs, seq) VALUES (%s, %s, 1, 0, 1, %s)",
                            (key(seq), order, seq))
                cur.execute("INSERT INTO sequence_marks (seq, outcome, chunk_key)"
                            " VALUES (%s, 'applied', %s)", (seq, key(seq)))
            cur.execute("UPDATE stream_position SET next_seq = 5")
        conn.commit()
        db.migrate(conn)
        assert [m[:3] for m in marks(conn)] == [(1, "applied", key(1)), (2, "applied", key(2)),
                                                (3, "skipped", None), (4, "applied", key(4))]
        assert late_marks(conn) == [(3, "applied", key(3))]
    finally:
        conn.close()


def test_hand_uploaded_chunks_need_no_turn(conn):
    apply(conn, "stream_chunks/by hand.csv")
    apply(conn, key(1))
    assert next_seq(conn) == 2


def test_the_migration_settles_chunks_applied_before_it(database_url):
    conn = db.connect(database_url)
    try:
        with conn.cursor() as cur:
            migrate_before(cur, 4)
            for n, seq in enumerate((1, 2, 3, 5), start=1):
                cur.execute("INSERT INTO processed_chunks (chunk_key, apply_order, rows_good,"
                            " rows_rejected, pairs) VALUES (%s, %s, 1, 0, 1)", (key(seq), n))
        conn.commit()
        db.migrate(conn)
        assert next_seq(conn) == 4
        assert [m[0] for m in marks(conn)] == [1, 2, 3, 5]
    finally:
        conn.close()
