"""Chunk keys met in another version than the one applied (docs/operations.md, "Conflicts").

A chunk key is immutable once applied or rejected: a message naming another ETag of it is
recorded here as ``overwritten`` and never applied. A message whose version was overwritten
before the worker read it is recorded as ``superseded``: the current version's own S3 event
brings it, and no failure is charged for the stale one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg2.extensions

from spark_detector.db import transaction

OVERWRITTEN, SUPERSEDED = "overwritten", "superseded"


@dataclass(frozen=True)
class ChunkConflict:
    chunk_key: str
    etag: str
    kind: str
    settled_etag: str | None
    seen: int
    first_seen_at: datetime
    last_seen_at: datetime


_COLUMNS = "chunk_key, etag, kind, settled_etag, seen, first_seen_at, last_seen_at"


def record_conflict(conn: psycopg2.extensions.connection, key: str, etag: str, kind: str,
                    settled_etag: str | None = None) -> ChunkConflict:
    """Record one more message naming version ``etag`` of ``key`` that is not applied."""
    with transaction(conn), conn.cursor() as cur:
        cur.execute(
            f"""
            INSERT INTO chunk_conflicts AS c (chunk_key, etag, kind, settled_etag)
            VALUES (%s, %s, %s, %s)
            ON CONFLICT (chunk_key, etag, kind) DO UPDATE SET
                seen = c.seen + 1, last_seen_at = clock_timestamp()
            RETURNING {_COLUMNS}
            """,
            (key, etag, kind, settled_etag),
        )
        return ChunkConflict(*cur.fetchone())


def recent_conflicts(conn: psycopg2.extensions.connection,
                     limit: int = 20) -> list[ChunkConflict]:
    with transaction(conn), conn.cursor() as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM chunk_conflicts ORDER BY last_seen_at DESC LIMIT %s",
                    (limit,))
        return [ChunkConflict(*row) for row in cur.fetchall()]
