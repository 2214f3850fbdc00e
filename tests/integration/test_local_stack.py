"""The local stack as real processes: moto server, resources, the Lambda runner, PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote_plus

import psycopg2
import pytest

from infra.local import postgres
from infra.local.stack import LocalServices, poll_until


def poll(condition, timeout: float = 30.0, every: float = 0.05):
    """The condition's first truthy value; fails after ``timeout`` seconds."""
    return poll_until(condition, timeout, "condition", every=every)


def recorded(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_chunk_put_reaches_the_handler_through_s3_notification_and_runner(
    tmp_path: Path, database_url: str
):
    record_path = tmp_path / "invocations.jsonl"
    with LocalServices.start(tmp_path / "stack", database_url=database_url,
                          handler="tests.support.handlers.recording_handler",
                          runner_env={"RECORD_PATH": str(record_path)}) as stack:
        s3, _ = stack.clients()
        s3.put_object(Bucket=stack.bucket, Key="detected_patterns/detections-00000001.csv",
                      Body=b"x")
        s3.put_object(Bucket=stack.bucket, Key="stream_chunks/chunk-00000001-x.csv", Body=b"x")

        [call] = poll(lambda: recorded(record_path))
        [record] = call["event"]["Records"]
        assert unquote_plus(record["s3"]["object"]["key"]) == "stream_chunks/chunk-00000001-x.csv"
        env = stack.env()
        assert env["AWS_ENDPOINT_URL"] == stack.endpoint
        assert env["QUEUE_URL"] == stack.resources.queue_url
        assert env["DATABASE_URL"] == database_url
        runner = stack.pids["lambda_runner"]
    assert not Path(f"/proc/{runner}").exists()  # stopped and reaped on exit


def test_failed_invocations_land_in_the_on_failure_queue(tmp_path: Path, database_url: str):
    record_path = tmp_path / "invocations.jsonl"
    with LocalServices.start(tmp_path / "stack", database_url=database_url,
                          handler="tests.support.handlers.failing_handler",
                          runner_env={"RECORD_PATH": str(record_path),
                                      "LAMBDA_RETRY_DELAYS": "0,0",
                                      "LAMBDA_WAIT_TIME_SECONDS": "1"}) as stack:
        s3, sqs = stack.clients()
        s3.put_object(Bucket=stack.bucket, Key="stream_chunks/chunk-00000009-x.csv", Body=b"x")

        def parked():
            return sqs.receive_message(QueueUrl=stack.resources.trigger_failures_queue_url,
                                       WaitTimeSeconds=1).get("Messages")

        [message] = poll(parked)
        assert json.loads(message["Body"])["requestContext"]["approximateInvokeCount"] == 3
        assert len(recorded(record_path)) == 3


def test_the_embedded_server_is_reused_and_its_database_recreated(tmp_path: Path):
    pgdata = tmp_path / "pgdata"
    first = postgres.start_embedded(pgdata)
    try:
        assert first.started_here
        url = postgres.recreate_database(first.url, "txn_demo")
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE leftover (x int)")
        again = postgres.start_embedded(pgdata)
        assert not again.started_here and again.url == first.url
        url = postgres.recreate_database(again.url, "txn_demo")
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'leftover'")
            assert cur.fetchone() == (0,)
        assert "psql" in postgres.psql_command(url)
    finally:
        assert postgres.stop_embedded(pgdata)
    assert not postgres.stop_embedded(pgdata)
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(first.url, connect_timeout=2)


def test_the_real_trigger_handler_turns_a_chunk_into_a_chunk_message(
    tmp_path: Path, database_url: str
):
    from chunk_contract.message import ChunkMessage

    with LocalServices.start(tmp_path / "stack", database_url=database_url) as stack:
        s3, sqs = stack.clients()
        key = "stream_chunks/chunk-00000001-20261127T040102.100Z.csv"
        put = s3.put_object(Bucket=stack.bucket, Key=key, Body=b"step,customer\n1,'C1'\n")
        s3.put_object(Bucket=stack.bucket, Key="quarantine/x.csv", Body=b"x")

        def chunk_messages():
            return sqs.receive_message(QueueUrl=stack.resources.queue_url,
                                       WaitTimeSeconds=1).get("Messages")

        [message] = poll(chunk_messages)
        chunk = ChunkMessage.from_json(message["Body"])
        assert (chunk.bucket, chunk.key, chunk.size) == (stack.bucket, key, 21)
        assert chunk.etag == put["ETag"].strip('"')
        assert chunk.event_time
    log = (tmp_path / "stack" / "logs" / "lambda.log").read_text()
    assert '"chunk enqueued"' in log  # the handler's own Powertools log line
