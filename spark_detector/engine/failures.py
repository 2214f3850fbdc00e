"""Real processing failures of chunks, counted by the system (docs/operations.md).

A redelivery is not a failure: a worker killed mid-batch makes SQS deliver its messages
again, and that says nothing about the chunks. A failure is an error raised while this
worker fetched, aggregated, applied or quarantined one chunk on its own (a failed
micro-batch is first retried chunk by chunk, so its good chunks are never blamed). Each one
is recorded here; after ``max_failures`` the worker moves the chunk to the DLQ itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import psycopg2.extensions

from spark_detector.db import transaction


@dataclass(frozen=True)
class ChunkFailure:
    chunk_key: str
    seq: int | None
    attempts: int
    last_error: str
    last_failed_at: datetime
    retry_after: datetime | None
    dead_lettered_at: datetime | None


_COLUMNS = "chunk_key, seq, attempts, last_error, last_failed_at, retry_after, dead_lettered_at"


def record_failure(conn: psycopg2.extensions.connection, key: str, seq: int | None,
                   error: str, retry_delay_seconds: float) -> ChunkFailure:
    """Count one more failure of ``key``. Its next try waits ``retry_delay_seconds`` doubled
    for every earlier failure (at most 12 hours)."""
    with transaction(conn), conn.cursor() as cur:
        cur.execute(
            f"""
            INSERT INTO chunk_failures AS f (chunk_key, seq, attempts, last_error, retry_after)
            VALUES (%(key)s, %(seq)s, 1, %(error)s,
                    clock_timestamp() + make_interval(secs => %(delay)s))
            ON CONFLICT (chunk_key) DO UPDATE SET
                attempts = f.attempts + 1,
                last_error = excluded.last_error,
                last_failed_at = clock_timestamp(),
                retry_after = clock_timestamp() + make_interval(
                    secs => least(43200, %(delay)s * power(2, f.attempts)))
            RETURNING {_COLUMNS}
            """,
            {"key": key, "seq": seq, "error": error[:4000], "delay": retry_delay_seconds},
        )
        return ChunkFailure(*cur.fetchone())


def failures_of(conn: psycopg2.extensions.connection, keys: list[str]) -> dict[str, ChunkFailure]:
    """The failure records of those ``keys`` that have one."""
    if not keys:
        return {}
    with transaction(conn), conn.cursor() as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM chunk_failures WHERE chunk_key = ANY(%s)",
                    (list(keys),))
        return {row[0]: ChunkFailure(*row) for row in cur.fetchall()}


def mark_dead_lettered(conn: psycopg2.extensions.connection, key: str) -> None:
    with transaction(conn), conn.cursor() as cur:
        cur.execute("UPDATE chunk_failures SET dead_lettered_at = clock_timestamp()"
                    " WHERE chunk_key = %s", (key,))


def forget_failures(conn: psycopg2.extensions.connection, key: str) -> None:
    """A dead-lettered chunk redriven by an operator starts with a fresh failure budget."""
    with transaction(conn), conn.cursor() as cur:
        cur.execute("DELETE FROM chunk_failures WHERE chunk_key = %s", (key,))


def failing_chunks(conn: psycopg2.extensions.connection, limit: int = 20) -> list[ChunkFailure]:
    """Chunks that failed and are neither done nor dead-lettered, most recent first."""
    with transaction(conn), conn.cursor() as cur:
        cur.execute(
            f"""
            SELECT {_COLUMNS} FROM chunk_failures f
            WHERE dead_lettered_at IS NULL
              AND NOT EXISTS (SELECT 1 FROM processed_chunks p WHERE p.chunk_key = f.chunk_key)
              AND NOT EXISTS (SELECT 1 FROM rejected_chunks r WHERE r.chunk_key = f.chunk_key)
            ORDER BY last_failed_at DESC
            LIMIT %s
            """,
            (limit,),
        )
        return [ChunkFailure(*row) for row in cur.fetchall()]


def dead_lettered_chunks(conn: psycopg2.extensions.connection,
                         limit: int = 20) -> list[ChunkFailure]:
    with transaction(conn), conn.cursor() as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM chunk_failures WHERE dead_lettered_at IS NOT NULL"
                    " ORDER BY dead_lettered_at DESC LIMIT %s", (limit,))
        return [ChunkFailure(*row) for row in cur.fetchall()]


_CAUSE_LINE = re.compile(r"^\s*([\w.]+(?:Error|Exception|Failure)): (.+)$")


def failure_text(exc: BaseException) -> str:
    """One line saying what went wrong. A Spark task's error arrives wrapped in a long
    report; its last "SomeError: message" line is the cause worth recording."""
    lines = str(exc).strip().splitlines()
    causes = [m for m in map(_CAUSE_LINE.match, lines) if m]
    if causes:
        name, message = causes[-1].groups()
        return f"{name.rsplit('.', 1)[-1]}: {message}"[:1000]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:1000]
