"""In-memory stand-ins for the worker's pieces in unit tests: an SQS queue that keeps its
messages in lists (the calls the worker makes, with failures to inject) and an aggregator
that answers a Spark job from a table of results."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import boto3
import psycopg2
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from chunk_contract.message import ChunkMessage
from spark_detector.chunk_aggregates import ChunkAggregates
from spark_detector.spark.batch_result import BatchResult

BUCKET = "data"
QUEUE_URL = "https://sqs.local/000000000000/chunks"
DLQ_URL = "https://sqs.local/000000000000/chunks-dlq"


def chunk_message(key: str, size: int = 100, etag: str = "e1") -> ChunkMessage:
    return ChunkMessage(bucket=BUCKET, key=key, size=size, etag=etag,
                        event_time="2026-12-01T00:00:00Z")


@dataclass
class Message:
    body: str
    handle: str
    attributes: dict[str, Any] = field(default_factory=dict)
    visible: bool = True
    receives: int = 0


class InMemoryQueue:
    """The SQS calls of ``worker.chunk_queue`` against lists: ``send`` a body, and the worker
    receives, deletes, extends and gives messages back as from SQS. ``refuse_deletes`` makes
    every delete fail (SQS unreachable); ``sent_to_dlq`` holds what went to the DLQ."""

    def __init__(self) -> None:
        self.messages: dict[str, Message] = {}
        self.deleted: list[str] = []
        self.sent_to_dlq: list[tuple[str, dict]] = []
        self.refuse_deletes = False
        self.on_receive: Callable[[], None] = lambda: None  # runs as a receive returns
        self._ids = itertools.count(1)

    def send(self, body: str, **attributes: Any) -> str:
        handle = f"h{next(self._ids)}"
        self.messages[handle] = Message(body, handle, attributes)
        return handle

    def send_chunk(self, key: str, **fields: Any) -> str:
        return self.send(chunk_message(key, **fields).to_json())

    def visible(self) -> list[str]:
        return [h for h, m in self.messages.items() if m.visible]

    def receive_message(self, *, QueueUrl: str, MaxNumberOfMessages: int, **_: Any) -> dict:
        batch = [m for m in self.messages.values() if m.visible][:MaxNumberOfMessages]
        for m in batch:
            m.visible = False
            m.receives += 1
        self.on_receive()
        return {"Messages": [
            {"MessageId": m.handle, "ReceiptHandle": m.handle, "Body": m.body,
             "Attributes": {"ApproximateReceiveCount": str(m.receives)},
             "MessageAttributes": m.attributes} for m in batch]}

    def delete_message_batch(self, *, QueueUrl: str, Entries: list[dict]) -> dict:
        if self.refuse_deletes:
            raise ClientError({"Error": {"Code": "ServiceUnavailable", "Message": "down"}},
                              "DeleteMessageBatch")
        for entry in Entries:
            self.messages.pop(entry["ReceiptHandle"], None)
            self.deleted.append(entry["ReceiptHandle"])
        return {"Successful": [{"Id": e["Id"]} for e in Entries]}

    def change_message_visibility_batch(self, *, QueueUrl: str, Entries: list[dict]) -> dict:
        for entry in Entries:
            message = self.messages.get(entry["ReceiptHandle"])
            if message is not None and entry["VisibilityTimeout"] == 0:
                message.visible = True
        return {"Successful": [{"Id": e["Id"]} for e in Entries]}

    def send_message(self, *, QueueUrl: str, MessageBody: str,
                     MessageAttributes: dict | None = None) -> dict:
        assert QueueUrl == DLQ_URL, QueueUrl
        self.sent_to_dlq.append((MessageBody, MessageAttributes or {}))
        return {"MessageId": "dlq"}


def result_of(*keys: str, fetch_ms: float | None = None, **outcomes: Any) -> BatchResult:
    """A Spark job's result: every key aggregated (no rows), unless ``outcomes`` says
    ``missing``/``rejected``/``superseded`` for it (``{"missing": {key: reason}}``)."""
    missing = outcomes.get("missing", {})
    rejected = outcomes.get("rejected", {})
    superseded = outcomes.get("superseded", {})
    good = [k for k in keys if k not in missing | rejected | superseded]
    return BatchResult({k: ChunkAggregates(k, 0, 0, ()) for k in good}, {}, dict(rejected),
                       dict(missing), {}, fetch_ms=fetch_ms, superseded_chunks=dict(superseded))


class FakeAggregator:
    """A Spark job answered from the keys it is given: each call recorded in ``jobs``;
    ``fail_when(keys)`` raises for a batch containing any of them (a chunk that breaks its
    job), ``gate`` blocks a job until the test lets it go."""

    def __init__(self, fail_when: Callable[[set[str]], bool] = lambda keys: False) -> None:
        self.jobs: list[dict[str, str]] = []
        self.fail_when = fail_when
        self.gate: Callable[[], None] = lambda: None

    def __call__(self, chunks: Mapping[str, str]) -> BatchResult:
        self.jobs.append(dict(chunks))
        self.gate()
        if self.fail_when(set(chunks)):
            raise RuntimeError(f"job failed: {sorted(chunks)}")
        return result_of(*chunks, fetch_ms=1.0)


class FakeServer:
    """A PostgreSQL server for the worker's session alone: it answers the statements a session
    makes on its own (the worker lock, the rebuild check, ``SELECT 1``) while ``up``, and each
    statement fails as on a lost connection while not. ``connections`` counts the connects."""

    def __init__(self) -> None:
        self.up = True
        self.connections = 0

    def connect(self) -> FakeConnection:
        if not self.up:
            raise psycopg2.OperationalError("could not connect to server: Connection refused")
        self.connections += 1
        return FakeConnection(self)


class FakeConnection:
    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.closed = 0
        self._row: tuple | None = None

    def cursor(self) -> FakeConnection:
        return self

    def __enter__(self) -> FakeConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def execute(self, statement: str, params: object = None) -> None:
        if not self.server.up or self.closed:
            self.closed = 2
            raise psycopg2.OperationalError("server closed the connection unexpectedly")
        if "pg_try_advisory_lock_shared" in statement:
            self._row = (True,)
        elif "to_regclass" in statement:
            self._row = (False,)  # no rebuild table: no rebuild
        else:
            self._row = (1,)

    def fetchone(self) -> tuple | None:
        return self._row

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        if self.closed:
            raise psycopg2.InterfaceError("connection already closed")

    def close(self) -> None:
        self.closed = 1


def stubbed_s3():
    """An S3 client whose answers the test queues (botocore's ``Stubber``): no endpoint."""
    s3 = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x",
                      aws_secret_access_key="x")
    return s3, Stubber(s3)
