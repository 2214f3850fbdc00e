"""The worker's database session (``worker.database``) against a stand-in server: a lost
connection is replaced, an outage is told from the work's own error, and the loop waits for
the database without receiving anything."""

from __future__ import annotations

import threading

import psycopg2
import pytest

from spark_detector.worker.database import Database, ping
from spark_detector.worker.errors import DatabaseUnavailable
from tests.support.fakes import FakeServer


def test_a_lost_connection_is_replaced_and_the_work_done_on_the_new_one():
    server = FakeServer()
    session = Database(server.connect, attempts=3, stop_event=threading.Event())
    session.run(ping)
    session.conn.closed = 2  # the server restarted: the old connection is dead
    assert session.run(lambda conn: "done") == "done"
    assert server.connections == 2


def test_a_database_that_stays_away_is_an_outage_not_the_works_error():
    server = FakeServer()
    session = Database(server.connect, attempts=2, stop_event=threading.Event())
    server.up = False
    with pytest.raises(DatabaseUnavailable, match="Connection refused"):
        session.run(ping)


def test_an_error_from_a_database_that_answers_belongs_to_the_work():
    server = FakeServer()
    session = Database(server.connect, attempts=2, stop_event=threading.Event())

    def refused(conn) -> None:
        raise psycopg2.OperationalError("the statement's own trouble")

    with pytest.raises(psycopg2.OperationalError, match="own trouble"):
        session.run(refused)


def test_the_wait_for_the_database_ends_when_it_answers_or_on_a_stop():
    server = FakeServer()
    stop = threading.Event()
    session = Database(server.connect, attempts=1, stop_event=stop)
    server.up = False
    session.down = True
    back = threading.Timer(0.2, lambda: setattr(server, "up", True))
    back.start()
    session.wait_until_back()
    assert not session.down and session.answers()

    server.up = False
    session.down = True
    stop.set()
    session.wait_until_back()  # asked to stop: returns at once, still down
    assert session.down
