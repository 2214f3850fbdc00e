"""The detection outbox: detections committed in PostgreSQL, grouped into files of 50 for S3.

Every detection is assigned to exactly one file, in detection (``seq``) order, inside the
transaction that committed it (``close_full_files``, called by ``apply_chunk``), or later by an
explicit flush (``close_partial_file``). A closed file never changes, so its name and bytes are
deterministic: a writer that crashes after the S3 put and before ``mark_written`` rewrites the
same object with the same bytes.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import psycopg2.extensions

from chunk_contract.layout import DETECTIONS_PREFIX
from spark_detector.db import ENGINE_LOCK, LOCK_NAMESPACE, transaction
from spark_detector.engine.detection import DETECTION_COLUMNS, Detection, detection_from_row

FILE_SIZE = 50
CSV_HEADER = (
    "YStartTime", "detectionTime", "patternId", "ActionType", "customerName", "MerchantId"
)
# India has had one fixed offset since 1945; a fixed zone keeps the output independent of tzdata.
IST = timezone(timedelta(hours=5, minutes=30), "IST")


class UnknownOutboxFile(LookupError):
    """mark_written was given a file number that was never closed."""


@dataclass(frozen=True)
class OutboxFile:
    file_no: int
    s3_key: str
    detections: tuple[Detection, ...]


def file_key(file_no: int, prefix: str = DETECTIONS_PREFIX) -> str:
    return f"{prefix}detections-{file_no:08d}.csv"


# Assigns unfiled detections (seq order) to new files numbered after the last one: only whole
# files of %(size)s, or with %(partial)s also the remainder as one last, smaller file.
_CLOSE_FILES_SQL = """
WITH unfiled AS (
    SELECT seq, row_number() OVER (ORDER BY seq) - 1 AS i, count(*) OVER () AS n
    FROM detected_patterns
    WHERE file_no IS NULL
), base AS (
    SELECT coalesce(max(file_no), 0) AS last_file FROM outbox_files
), assigned AS (
    SELECT u.seq, base.last_file + 1 + u.i / %(size)s AS file_no
    FROM unfiled u CROSS JOIN base
    WHERE u.i < CASE WHEN %(partial)s THEN u.n ELSE (u.n / %(size)s) * %(size)s END
), files AS (
    INSERT INTO outbox_files (file_no, first_seq, last_seq, detections, s3_key)
    SELECT file_no, min(seq), max(seq), count(*),
           %(prefix)s || 'detections-' || lpad(file_no::text, 8, '0') || '.csv'
    FROM assigned GROUP BY file_no
)
UPDATE detected_patterns d
SET file_no = a.file_no
FROM assigned a
WHERE d.seq = a.seq
RETURNING d.file_no
"""


def close_full_files(cur: psycopg2.extensions.cursor, *, partial: bool = False,
                     prefix: str = DETECTIONS_PREFIX) -> list[int]:
    """Inside the caller's transaction, which must hold the engine lock: the files it closed.

    Each file's S3 key (``file_key``) is fixed here, once: a later restart with another
    prefix writes the files closed before it under the keys they were given.
    """
    cur.execute(_CLOSE_FILES_SQL, {"size": FILE_SIZE, "partial": partial, "prefix": prefix})
    return sorted({row[0] for row in cur.fetchall()})


def close_partial_file(conn: psycopg2.extensions.connection,
                       prefix: str = DETECTIONS_PREFIX) -> int | None:
    """Close the leftover (< 50) unfiled detections into one file (drain or idle flush).

    Returns the new file's number, or None when nothing was waiting. Commits.
    """
    with transaction(conn), conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_NAMESPACE, ENGINE_LOCK))
        closed = close_full_files(cur, partial=True, prefix=prefix)
    return closed[-1] if closed else None


def pending_files(
    conn: psycopg2.extensions.connection, prefix: str = DETECTIONS_PREFIX
) -> list[OutboxFile]:
    """Closed files not yet written to S3, in file order, each with its detections in seq order."""
    columns = ", ".join(f"d.{c.strip()}" for c in DETECTION_COLUMNS.split(","))
    with transaction(conn), conn.cursor() as cur:
        cur.execute(
            f"""
            SELECT f.file_no, f.s3_key, {columns}
            FROM outbox_files f
            JOIN detected_patterns d ON d.file_no = f.file_no
            WHERE f.written_at IS NULL
            ORDER BY f.file_no, d.seq
            """
        )
        rows = cur.fetchall()
    grouped: dict[int, list[Detection]] = {}
    keys: dict[int, str] = {}
    for row in rows:
        # files closed before keys were fixed at close time have none: they get ``prefix``
        keys[row[0]] = row[1] or file_key(row[0], prefix)
        grouped.setdefault(row[0], []).append(detection_from_row(row[2:]))
    return [
        OutboxFile(file_no, keys[file_no], tuple(detections))
        for file_no, detections in grouped.items()
    ]


def mark_written(conn: psycopg2.extensions.connection, file_no: int, s3_key: str) -> None:
    """Record that the file is in S3 under ``s3_key`` (idempotent; keeps the first written_at)."""
    with transaction(conn), conn.cursor() as cur:
        cur.execute(
            """
            UPDATE outbox_files
            SET s3_key = %(key)s, written_at = coalesce(written_at, clock_timestamp())
            WHERE file_no = %(file_no)s
            """,
            {"key": s3_key, "file_no": file_no},
        )
        if cur.rowcount == 0:
            raise UnknownOutboxFile(f"outbox file {file_no} does not exist")
        cur.execute(
            "UPDATE detected_patterns SET s3_key = %(key)s WHERE file_no = %(file_no)s",
            {"key": s3_key, "file_no": file_no},
        )


def ist_timestamp(moment: datetime) -> str:
    """ISO-8601 in IST with milliseconds, e.g. ``2026-11-27T04:01:02.123+05:30``."""
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {moment!r} has no time zone")
    return moment.astimezone(IST).isoformat(timespec="milliseconds")


def render_csv(detections: Sequence[Detection]) -> bytes:
    """The file's bytes: header and one line per detection, UTF-8, LF line ends."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for d in detections:
        writer.writerow(
            (
                ist_timestamp(d.y_start_time),
                ist_timestamp(d.detected_at),
                d.pattern_id,
                d.action_type,
                d.customer_name,
                d.merchant_id,
            )
        )
    return buffer.getvalue().encode("utf-8")
