"""The worker's database session: one connection for the process, retried with a new
connection, and an outage told from the work's own errors (``DatabaseUnavailable``).

The connection holds the worker lock for its life, so that ``replay --replace`` refuses while a
worker runs, and a worker refuses to use a database an unfinished rebuild left
(``db.RebuildInProgress``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg2

from spark_detector import db
from spark_detector.retry import backoff_delays, retry
from spark_detector.worker.errors import DatabaseUnavailable

logger = logging.getLogger(__name__)
T = TypeVar("T")

# The psycopg2 errors that may be an outage; db.is_outage / db.is_transient tell which are.
TRANSIENT_DB_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)


def ping(conn: Any) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    conn.rollback()


class Database:
    """``run(fn)`` calls ``fn(conn)`` on the session's connection, reconnecting with bounded
    backoff (``attempts`` tries); past that, ``DatabaseUnavailable``."""

    def __init__(self, connect: Callable[[], Any], attempts: int,
                 stop_event: threading.Event) -> None:
        self._connect = connect
        self._attempts = attempts
        self._stop = stop_event
        self.conn: Any = None
        self.down = False  # an outage was declared: the loop waits for the database

    def _connection(self) -> Any:
        if self.conn is None or getattr(self.conn, "closed", False):
            conn = self._connect()
            # Held for the session's life, so `replay --replace` refuses while we run.
            if not db.try_worker_lock(conn):
                conn.close()
                raise db.RebuildInProgress("`replay --replace` is rebuilding the database"
                                           " right now")
            unfinished = db.rebuild_in_progress(conn)
            if unfinished is not None:  # interrupted, or failed: its state is not to be used
                conn.close()
                raise db.RebuildInProgress(unfinished.describe())
            self.conn = conn
        return self.conn

    def _drop_connection(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg2.Error):  # already broken: just drop it
                self.conn.close()
        self.conn = None

    def _reset_connection(self, attempt: int, exc: BaseException, delay: float) -> None:
        logger.warning("database unavailable, reconnecting", extra={
            "attempt": attempt, "error": str(exc).strip(), "retry_in_s": round(delay, 2)})
        self._drop_connection()

    def answers(self) -> bool:
        try:
            ping(self._connection())
            return True
        except TRANSIENT_DB_ERRORS:
            self._drop_connection()
            return False

    def run(self, fn: Callable[[Any], T]) -> T:
        """``fn(conn)``, reconnecting with bounded backoff while PostgreSQL is out of reach
        (``db.is_transient``); ``DatabaseUnavailable`` when it stays so. An error from a
        database that does answer - a statement it refused, even one psycopg2 reports as
        ``OperationalError`` - is raised at once, as it is: it belongs to the work (a chunk's
        failure), not to an outage."""
        try:
            return retry(lambda: fn(self._connection()), retry_on=TRANSIENT_DB_ERRORS,
                         retry_if=db.is_transient, attempts=self._attempts, base=0.25,
                         cap=4.0, on_retry=self._reset_connection)
        except psycopg2.Error as exc:
            if not db.is_outage(exc):
                self._end_failed_transaction()
                raise
            if self.answers():
                raise
            raise DatabaseUnavailable(str(exc).strip()) from exc

    def _end_failed_transaction(self) -> None:
        """Roll back what a refused statement left open, so that the connection serves the
        next work (``db.transaction`` does it already; work outside one may not)."""
        conn = self.conn
        if conn is not None and not conn.closed:
            try:
                conn.rollback()
            except psycopg2.Error:
                self._drop_connection()

    def wait_until_back(self) -> None:
        """Block, receiving nothing, until PostgreSQL answers again (or a stop is asked)."""
        attempt = 0
        while not self._stop.is_set() and not self.answers():
            attempt += 1
            delay = backoff_delays(min(attempt, 8) + 1, base=0.5, cap=15.0)[-1]
            logger.warning("database still unavailable: receiving nothing",
                           extra={"attempt": attempt, "retry_in_s": delay})
            self._stop.wait(delay)
        if not self._stop.is_set():
            self.down = False
            logger.info("database is back: resuming", extra={"attempts": attempt})

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
