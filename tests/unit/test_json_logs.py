"""The JSON log lines the worker, the producer and the local Lambda runner write."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime

import pytest

import json_logs


@pytest.fixture
def lines():
    """Configure like a process's __main__ does; the lines written, as dicts."""
    stream = io.StringIO()
    saved = logging.getLogger().level, logging.getLogger("app_under_test").level
    json_logs.configure("app_under_test", stream=stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == json_logs.__name__]:
        root.removeHandler(handler)
    root.setLevel(saved[0])
    logging.getLogger("app_under_test").setLevel(saved[1])


def test_a_line_carries_the_message_and_every_extra_field(lines):
    logging.getLogger("app_under_test.worker").info(
        "batch done",
        extra={"chunks": 3, "keys": ["a", "b"], "when": datetime(2026, 1, 1, tzinfo=UTC)})
    [line] = lines()
    assert line["message"] == "batch done" and line["level"] == "INFO"
    assert line["logger"] == "app_under_test.worker"
    assert (line["chunks"], line["keys"]) == (3, ["a", "b"])
    assert line["when"] == "2026-01-01 00:00:00+00:00"  # not JSON: logged as its text
    assert datetime.fromisoformat(line["timestamp"]).tzinfo is not None


def test_logger_exception_writes_the_traceback(lines):
    try:
        raise KeyError("chunk-1")
    except KeyError:
        logging.getLogger("app_under_test").exception("batch failed", extra={"chunk_key": "k"})
    [line] = lines()
    assert line["level"] == "ERROR" and line["chunk_key"] == "k"
    assert line["exception_name"] == "KeyError"
    assert "Traceback" in line["exception"] and "chunk-1" in line["exception"]


def test_other_libraries_log_only_warnings_and_configuring_twice_writes_once(lines):
    json_logs.configure("app_under_test", stream=io.StringIO())  # replaced below
    stream = io.StringIO()
    json_logs.configure("app_under_test", stream=stream)
    logging.getLogger("py4j.clientserver").info("chatter")
    logging.getLogger("py4j.clientserver").warning("worth seeing")
    logging.getLogger("app_under_test").info("ours")
    messages = [json.loads(line)["message"] for line in stream.getvalue().splitlines()]
    assert messages == ["worth seeing", "ours"]
