"""Proof that concurrent operations really overlapped, for the tests that claim they do.

Two threads started one after the other may well run one after the other. ``held_until_
contended`` makes the overlap certain and visible: it holds one of the project's advisory
locks (``spark_detector.db``) in a session of its own and lets go only once PostgreSQL shows
the expected number of other sessions waiting for that very lock - every one of them is then
inside the operation at the same moment.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing, contextmanager

import psycopg2

from infra.local.stack import poll_until
from spark_detector.db import LOCK_NAMESPACE

WAITING = """
SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND classid = %s AND objid = %s AND objsubid = 2 AND NOT granted
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


def sessions_waiting(conn, lock: int) -> int:
    with conn.cursor() as cur:
        cur.execute(WAITING, (LOCK_NAMESPACE, lock))
        return cur.fetchone()[0]


@contextmanager
def held_until_contended(database_url: str, lock: int, waiters: int,
                         timeout: float = 60) -> Iterator[None]:
    """Hold advisory lock ``(LOCK_NAMESPACE, lock)`` while the block starts the concurrent
    operations; at the block's end, wait until ``waiters`` sessions wait for the lock, then
    release it (raises when they do not all come within ``timeout``)."""
    with closing(psycopg2.connect(database_url)) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_NAMESPACE, lock))
        try:
            yield
            poll_until(lambda: sessions_waiting(conn, lock) >= waiters, timeout,
                       f"{waiters} sessions waiting for advisory lock {lock}", every=0.05)
        finally:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_NAMESPACE, lock))
