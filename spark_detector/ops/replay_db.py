"""The replay's PostgreSQL side: the live run read back (apply order, rejected chunks, numbers
settled without their chunk, detections), the target database or schema made ready, the live
numbers settled as recorded, and the outbox sealed at the end (``replay.run_replay``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from spark_detector import db
from spark_detector.engine import outbox
from spark_detector.engine import state as detection_state
from spark_detector.ops.rebuild import ENGINE_TABLES, REBUILD_SCHEMA
from spark_detector.ops.replay_plan import (
    FiredDetection,
    RecordedChunk,
    ReplayError,
    ReplayRefused,
    Target,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RejectedRecord:
    key: str
    reason: str
    quarantine_key: str
    etag: str
    event_time: datetime | None
    duplicate_of: str | None = None  # the chunk holding its sequence number


@dataclass(frozen=True)
class SettledNumber:
    """A sequence number the live run settled without applying its chunk."""

    seq: int
    outcome: str  # "skipped" (by an operator) or "dead_lettered"
    chunk_key: str | None
    reason: str | None
    decided_by: str | None


@dataclass(frozen=True)
class LiveRun:
    """What the live database recorded; ``recorded`` is None when it has no engine tables."""

    recorded: tuple[RecordedChunk, ...] | None
    rejected: tuple[RejectedRecord, ...]
    detections: tuple[FiredDetection, ...]
    settled: tuple[SettledNumber, ...] = ()


# --- PostgreSQL ----------------------------------------------------------------------------


def connect(url: str, *, schema: str | None = None) -> psycopg2.extensions.connection:
    """A connection for the replay's writes: autocommit off, and (safe for a result that can
    be rebuilt) asynchronous commit, which saves a WAL flush per chunk."""
    options = "-c synchronous_commit=off"
    if schema is not None:
        options += f" -c search_path={schema}"
    return db.connect(url, options=options)


def _with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def ensure_database(url: str) -> None:
    """Create the URL's database on its server if it does not exist."""
    dbname = urlsplit(url).path.lstrip("/")
    if not dbname:
        raise ReplayError(f"--into {db.redact_dsn(url)}: the URL names no database")
    admin = db.connect(_with_database(url, "postgres"))
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
                logger.info("replay database created", extra={"database": dbname})
    finally:
        admin.close()


def identity(conn: psycopg2.extensions.connection) -> tuple:
    """(server start, database, schema): equal for two connections to the same tables."""
    with db.transaction(conn), conn.cursor() as cur:
        cur.execute("SELECT pg_postmaster_start_time(), current_database(), current_schema()")
        return cur.fetchone()


def _has_engine_tables(cur: psycopg2.extensions.cursor) -> bool:
    cur.execute("SELECT to_regclass('processed_chunks') IS NOT NULL"
                " AND to_regclass('detected_patterns') IS NOT NULL")
    return bool(cur.fetchone()[0])


def read_live_run(conn: psycopg2.extensions.connection) -> LiveRun:
    """The live run's apply order, rejected chunks and detections (one snapshot)."""
    with db.transaction(conn), conn.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        if not _has_engine_tables(cur):
            return LiveRun(None, (), ())
        cur.execute("SELECT chunk_key, apply_order, etag, event_time FROM processed_chunks"
                    " ORDER BY apply_order")
        recorded = tuple(RecordedChunk(*row) for row in cur.fetchall())
        cur.execute("SELECT count(*) = 1 FROM information_schema.columns WHERE table_name ="
                    " 'rejected_chunks' AND column_name = 'duplicate_of'"
                    " AND table_schema = current_schema()")
        duplicate_of = "duplicate_of" if cur.fetchone()[0] else "NULL"  # before migration 8
        cur.execute("SELECT chunk_key, reason, quarantine_key, etag, event_time,"
                    f" {duplicate_of} FROM rejected_chunks ORDER BY chunk_key")
        rejected = tuple(RejectedRecord(*row) for row in cur.fetchall())
        detections = _fired_detections(cur)
        settled: tuple[SettledNumber, ...] = ()
        cur.execute("SELECT to_regclass('sequence_marks') IS NOT NULL")
        if cur.fetchone()[0]:
            cur.execute("SELECT seq, outcome, chunk_key, reason, decided_by FROM sequence_marks"
                        " WHERE outcome IN ('skipped', 'dead_lettered') ORDER BY seq")
            settled = tuple(SettledNumber(*row) for row in cur.fetchall())
    return LiveRun(recorded, rejected, detections, settled)


def _fired_detections(cur: psycopg2.extensions.cursor) -> tuple[FiredDetection, ...]:
    cur.execute("SELECT seq, pattern_id, merchant_id, customer_name, chunk_key, apply_order"
                " FROM detected_patterns ORDER BY seq")
    return tuple(FiredDetection(*row) for row in cur.fetchall())


def fired_detections(conn: psycopg2.extensions.connection) -> tuple[FiredDetection, ...]:
    with db.transaction(conn), conn.cursor() as cur:
        return _fired_detections(cur)


def empty_engine_tables(conn: psycopg2.extensions.connection) -> None:
    """As after the migrations: no chunks, no state, the stream waiting for chunk 1 (the
    reference weight cache and schema_migrations stay)."""
    with db.transaction(conn), conn.cursor() as cur:
        cur.execute(sql.SQL("TRUNCATE {}").format(
            sql.SQL(", ").join(sql.Identifier(t) for t in (*ENGINE_TABLES, "chunk_failures"))))
        cur.execute("INSERT INTO stream_position (next_seq) VALUES (1)")


def _holds_anything(conn: psycopg2.extensions.connection) -> bool:
    with db.transaction(conn), conn.cursor() as cur:
        cur.execute("SELECT EXISTS (SELECT 1 FROM processed_chunks)"
                    " OR EXISTS (SELECT 1 FROM rejected_chunks)"
                    " OR EXISTS (SELECT 1 FROM detected_patterns)")
        return bool(cur.fetchone()[0])


def connect_target(target: Target, live_url: str) -> psycopg2.extensions.connection:
    """A connection to the target: a database (created if missing), or a schema of the live
    database (created if missing); for --replace, the rebuild's schema beside the live
    tables (``rebuild.LiveRebuild`` installs it)."""
    schema = REBUILD_SCHEMA if target.replace else target.schema
    if schema is not None:
        conn = connect(live_url, schema=schema)
        with db.transaction(conn), conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        return conn
    if target.database_url is None:
        raise ReplayError("the replay names no database to write to")
    ensure_database(target.database_url)
    return connect(target.database_url)


def prepare_target(conn: psycopg2.extensions.connection, target: Target,
                   live_identity: tuple | None, *, reset: bool) -> None:
    """Migrate the target and make sure it is empty; refuse the live tables (but --replace)."""
    if not target.replace and live_identity is not None and identity(conn) == live_identity:
        raise ReplayRefused(f"--into: {target.describe()} holds the live tables; choose"
                            " another database or schema (or --replace to rebuild them)")
    db.migrate(conn)
    if target.replace or reset:
        empty_engine_tables(conn)
    elif _holds_anything(conn):
        raise ReplayError(f"{target.describe()} already holds a replay or a run; add"
                          " --reset to empty it first, or choose another target")


def settle_like_live(conn: psycopg2.extensions.connection, live: LiveRun, gaps: list[int],
                     prefix: str) -> None:
    """Settle in the target what the live run settled without applying a chunk - the numbers
    an operator skipped and the chunks it dead-lettered (reasons and who decided included),
    its whole-chunk rejections, and ``gaps``, numbers neither in the archive nor settled
    live - so that the engine's production order lets every planned chunk through, as it did
    live. The marks come first: a chunk that came late (skipped, then rejected when it came)
    is then recorded as late, as it was live. A duplicate sequence number is recorded as
    one, settling nothing: the number is its holder's, applied in its turn."""
    for n in live.settled:
        detection_state.settle_number(conn, n.seq, n.outcome, chunk_key=n.chunk_key,
                                      reason=n.reason, decided_by=n.decided_by)
    for r in live.rejected:
        detection_state.record_rejected_chunk(
            conn, detection_state.ChunkRef(r.key, r.etag, r.event_time, prefix), r.reason,
            r.quarantine_key, duplicate_of=r.duplicate_of)
    for seq in gaps:
        detection_state.settle_number(
            conn, seq, "skipped", reason="not in the chunk archive: the replay went on without"
            " it", decided_by="replay")


def seal_outbox(conn: psycopg2.extensions.connection) -> None:
    """Close the last partial file and mark every file as handled, without an S3 key.

    A replay that publishes nothing must leave nothing pending: a worker pointed at this
    database by mistake would otherwise write its files to the live prefix.
    """
    outbox.close_partial_file(conn)
    with db.transaction(conn), conn.cursor() as cur:
        cur.execute("UPDATE outbox_files SET written_at = clock_timestamp(), s3_key = NULL"
                    " WHERE written_at IS NULL")


