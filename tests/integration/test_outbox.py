"""The detection outbox: files of exactly 50 in seq order, flushing, rendering, mark_written."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import psycopg2.extensions
import pytest

from spark_detector import db
from spark_detector.engine.outbox import (
    UnknownOutboxFile,
    close_partial_file,
    mark_written,
    pending_files,
    render_csv,
)
from spark_detector.engine.rules import Thresholds
from spark_detector.engine.state import ChunkRef, Detection, apply_chunk
from tests.reference_model import chunk_from_rows

Y_START = datetime(2026, 11, 26, 22, 31, 2, 123456, tzinfo=UTC)
# Every new pair fires PatId2 at once: one detection per customer.
EACH_PAIR_FIRES = Thresholds(child_min_count=1, dei_min_female=10**6)


@pytest.fixture
def conn(migrated_database_url: str) -> Iterator[psycopg2.extensions.connection]:
    connection = db.connect(migrated_database_url)
    yield connection
    connection.close()


def fire(conn, key: str, customers: range, prefix: str = "detected_patterns/"
         ) -> list[Detection]:
    aggregates = chunk_from_rows(key, [(f"C{i:04d}", "M1", "1.00", "F") for i in customers])
    return apply_chunk(conn, ChunkRef(key), aggregates, y_start_time=Y_START,
                       thresholds=EACH_PAIR_FIRES, detections_prefix=prefix)


def test_files_hold_exactly_50_detections_in_seq_order(conn):
    assert len(fire(conn, "c1", range(49))) == 49
    assert pending_files(conn) == []
    fire(conn, "c2", range(49, 50))
    files = pending_files(conn)
    assert [f.file_no for f in files] == [1]
    assert [d.seq for d in files[0].detections] == list(range(1, 51))
    fire(conn, "c3", range(50, 170))  # 49 + 1 + 120 = 170 -> files 2, 3 and 20 left over
    files = pending_files(conn)
    assert [(f.file_no, f.s3_key, len(f.detections)) for f in files] == [
        (1, "detected_patterns/detections-00000001.csv", 50),
        (2, "detected_patterns/detections-00000002.csv", 50),
        (3, "detected_patterns/detections-00000003.csv", 50),
    ]
    assert files[2].detections[-1].seq == 150


def test_close_partial_file_flushes_the_leftover_once(conn):
    assert close_partial_file(conn) is None
    fire(conn, "c1", range(70), prefix="out/")
    assert close_partial_file(conn, "out/") == 2
    files = pending_files(conn, prefix="elsewhere/")
    assert [(f.file_no, f.s3_key, len(f.detections)) for f in files] == [
        (1, "out/detections-00000001.csv", 50), (2, "out/detections-00000002.csv", 20),
    ]
    assert close_partial_file(conn) is None
    fire(conn, "c2", range(70, 120))  # the next file starts after the partial one
    assert [f.detections[0].seq for f in pending_files(conn)] == [1, 51, 71]


def test_a_files_key_is_fixed_when_it_is_closed_not_when_it_is_published(conn):
    fire(conn, "c1", range(60), prefix="before/")
    fire(conn, "c2", range(60, 100), prefix="after/")  # a restart with another prefix
    assert [f.s3_key for f in pending_files(conn, prefix="after/")] == [
        "before/detections-00000001.csv", "after/detections-00000002.csv"]


def test_mark_written_removes_the_file_from_pending_and_records_the_key(conn):
    fire(conn, "c1", range(100))
    first, second = pending_files(conn)
    mark_written(conn, first.file_no, first.s3_key)
    mark_written(conn, first.file_no, first.s3_key)  # a retried writer
    assert pending_files(conn) == [second]
    with conn.cursor() as cur:
        cur.execute("SELECT file_no, count(*), min(s3_key), max(s3_key) FROM detected_patterns"
                    " GROUP BY file_no ORDER BY file_no")
        assert cur.fetchall() == [(1, 50, first.s3_key, first.s3_key), (2, 50, None, None)]
        cur.execute("SELECT written_at IS NOT NULL FROM outbox_files ORDER BY file_no")
        assert cur.fetchall() == [(True,), (False,)]
    conn.rollback()
    with pytest.raises(UnknownOutboxFile):
        mark_written(conn, 99, "detected_patterns/detections-00000099.csv")


def test_a_pending_file_renders_the_same_bytes_every_time(conn):
    fire(conn, "c1", range(50))
    (file,) = pending_files(conn)
    again = db.connect(conn.dsn)
    try:
        (same,) = pending_files(again)
    finally:
        again.close()
    assert render_csv(file.detections) == render_csv(same.detections)
    lines = render_csv(file.detections).decode().splitlines()
    assert lines[0] == "YStartTime,detectionTime,patternId,ActionType,customerName,MerchantId"
    assert len(lines) == 51
    assert lines[1].startswith("2026-11-27T04:01:02.123+05:30,")
    assert lines[1].endswith(",PatId2,CHILD,C0000,M1")


def test_render_csv_formats_ist_with_milliseconds_and_empty_fields():
    detected = datetime(2026, 11, 27, 4, 1, 2, 999999, tzinfo=timezone(timedelta(hours=-3)))
    rows = [
        Detection(1, "PatId3", "DEI-NEEDED", "", "M1", "c1", 1, detected, Y_START),
        Detection(2, "PatId1", "UPGRADE", "C,1", "M2", "c1", 1, detected, Y_START),
    ]
    assert render_csv(rows) == (
        b"YStartTime,detectionTime,patternId,ActionType,customerName,MerchantId\n"
        b"2026-11-27T04:01:02.123+05:30,2026-11-27T12:31:02.999+05:30,PatId3,DEI-NEEDED,,M1\n"
        b'2026-11-27T04:01:02.123+05:30,2026-11-27T12:31:02.999+05:30,PatId1,UPGRADE,"C,1",M2\n'
    )
    with pytest.raises(ValueError, match="time zone"):
        render_csv([Detection(1, "PatId3", "DEI-NEEDED", "", "M1", "c1", 1,
                              datetime(2026, 1, 1), Y_START)])
