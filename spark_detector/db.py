"""PostgreSQL connection and schema migrations for the detection engine.

Migrations are the numbered files ``spark_detector/migrations/NNNN_name.sql``, applied in order,
each recorded in ``schema_migrations``. ``migrate`` runs them all in one transaction under an
advisory lock, so two workers starting together apply each file exactly once and a failing
file leaves the schema as it was.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg2
import psycopg2.extensions

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Advisory lock keys (two-int form): one namespace for this project, one key per purpose.
LOCK_NAMESPACE = 0x53504B44  # "SPKD"
MIGRATION_LOCK = 1
ENGINE_LOCK = 2
# Session-level: every running worker holds it shared; `replay --replace` needs it exclusive.
WORKER_LOCK = 3

log = logging.getLogger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class RebuildInProgress(RuntimeError):
    """A `replay --replace` is rebuilding this database, or has not finished: a worker must
    not apply chunks now, nor an operator skip numbers."""


EXIT_REBUILD_IN_PROGRESS = 5  # the exit code of a command refused because of it


class DatabaseUnreachable(psycopg2.OperationalError):
    """No connection could be opened. The message names the database, its password redacted;
    an ``OperationalError`` still, so that callers that retry one retry this too."""


# SQLSTATEs that say the server cannot serve this session at all, whatever it runs: class 08
# (connection exception), class 53 (insufficient resources: disk full, out of memory, too
# many connections) and the shutdowns of class 57 (57P01 admin shutdown, 57P02 crash
# shutdown, 57P03 cannot connect now). psycopg2 raises these, and many statement errors
# besides (54000 "index row size exceeds btree maximum", 55P03 lock not available, ...), as
# OperationalError: the class alone does not tell an outage from a refused statement.
OUTAGE_CLASSES = ("08", "53")
OUTAGE_CODES = ("57P01", "57P02", "57P03")


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means PostgreSQL cannot be reached or cannot serve anyone (an outage:
    wait for it), rather than an error about the statement it ran (the work's own failure).

    No SQLSTATE at all means libpq never got an answer: the connection could not be opened
    or was lost (``InterfaceError``: already closed)."""
    if isinstance(exc, psycopg2.InterfaceError):
        return True
    if not isinstance(exc, psycopg2.OperationalError):
        return False
    code = exc.pgcode
    return code is None or code[:2] in OUTAGE_CLASSES or code in OUTAGE_CODES


def is_transient(exc: BaseException) -> bool:
    """Whether running the same work again may succeed: an outage, or a transaction the
    server rolled back for a conflict with another (a deadlock, a serialization failure)."""
    return is_outage(exc) or isinstance(exc, psycopg2.extensions.TransactionRollbackError)


def redact_dsn(dsn: str) -> str:
    """A connection string (URL or ``key=value`` form) without its password."""
    dsn = re.sub(r"(://[^:/@?#]*):[^@/?#]*@", r"\1:***@", dsn)  # postgresql://user:secret@host
    return re.sub(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^&\s]+)", r"\1***", dsn)


class MigrationError(RuntimeError):
    """The migration files are inconsistent (duplicate or unparsable version numbers)."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def connect(url: str, **options: str) -> psycopg2.extensions.connection:
    """A connection with autocommit off: every engine call commits its own transaction.
    ``DatabaseUnreachable`` when none can be opened."""
    try:
        conn = psycopg2.connect(url, **options)
    except psycopg2.OperationalError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DatabaseUnreachable(f"cannot connect to the database {redact_dsn(url)}: {first}"
                                  ) from exc
    conn.autocommit = False
    return conn


@contextmanager
def transaction(conn: psycopg2.extensions.connection) -> Iterator[None]:
    """Commit when the block ends normally; otherwise roll back and re-raise the block's error.

    A rollback that itself fails (the connection is gone) is logged, never raised over the
    original error.
    """
    try:
        yield
    except BaseException:
        if not conn.closed:
            try:
                conn.rollback()
            except psycopg2.Error as exc:
                log.warning("rollback failed", extra={"error": str(exc)})
        raise
    conn.commit()


def try_worker_lock(conn: psycopg2.extensions.connection) -> bool:
    """Take the worker lock, shared, for this session (until it ends); False if a rebuild holds it.

    A worker takes it on every new connection before it touches the engine tables, and so
    holds it as long as it runs. Several workers share it; ``try_rebuild_lock`` cannot get it
    while any of them is connected, and they cannot get it while a rebuild runs.
    """
    with transaction(conn), conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock_shared(%s, %s)", (LOCK_NAMESPACE, WORKER_LOCK))
        return bool(cur.fetchone()[0])


def try_rebuild_lock(conn: psycopg2.extensions.connection) -> bool:
    """Take the worker lock exclusively for this session; False while any worker holds it."""
    with transaction(conn), conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_NAMESPACE, WORKER_LOCK))
        return bool(cur.fetchone()[0])


@dataclass(frozen=True)
class RebuildState:
    """A `replay --replace` that started and has not finished (table rebuild_in_progress)."""

    started_at: datetime
    started_by: str
    replay_order: str
    runs: int

    def describe(self) -> str:
        return (f"a rebuild of this database (`replay --replace --order {self.replay_order}`,"
                f" started {self.started_at.isoformat(timespec='seconds')} by {self.started_by},"
                f" {self.runs} run(s)) has not finished; run `python -m spark_detector replay"
                " --replace` again to finish it")


def rebuild_in_progress(conn: psycopg2.extensions.connection) -> RebuildState | None:
    """The unfinished rebuild of this database, if any (none before migration 0006)."""
    with transaction(conn), conn.cursor() as cur:
        cur.execute("SELECT to_regclass('rebuild_in_progress') IS NOT NULL")
        if not cur.fetchone()[0]:
            return None
        cur.execute("SELECT started_at, started_by, replay_order, runs FROM rebuild_in_progress")
        row = cur.fetchone()
    return None if row is None else RebuildState(*row)


def available_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files in version order; the version is the file name's 4-digit prefix."""
    migrations: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path}: migration files must be named NNNN_name.sql")
        migrations.append(Migration(int(match.group(1)), path.stem, path.read_text("utf-8")))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{directory}: duplicate migration versions {versions}")
    return migrations


def migrate(conn: psycopg2.extensions.connection, directory: Path = MIGRATIONS_DIR) -> int:
    """Apply every migration not yet recorded, in order, in one transaction; return the version.

    Idempotent. The transaction-level advisory lock makes concurrent callers wait for each other,
    so the second one finds everything applied.
    """
    migrations = available_migrations(directory)
    with transaction(conn), conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_NAMESPACE, MIGRATION_LOCK))
        cur.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
            )
            """
        )
        cur.execute("SELECT version FROM schema_migrations")
        applied = {row[0] for row in cur.fetchall()}
        for migration in migrations:
            if migration.version in applied:
                continue
            cur.execute(migration.sql)
            cur.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
        cur.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
        version = cur.fetchone()[0]
    return version


def schema_version(conn: psycopg2.extensions.connection) -> int:
    """The highest applied migration version (0 when the database was never migrated)."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
        if not cur.fetchone()[0]:
            conn.rollback()
            return 0
        cur.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
        version = cur.fetchone()[0]
    conn.rollback()
    return version
