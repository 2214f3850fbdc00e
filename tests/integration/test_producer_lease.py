"""One producer writes a stream at a time: the real ``python -m producer stream`` process
takes a lease on the stream's state object (a conditional write, If-Match / If-None-Match)
against a moto S3 server, and a second one refuses to start (docs/producer.md)."""

from __future__ import annotations

import json
import signal
import subprocess
import uuid

import boto3

from tests.support.producers import REPO, SAMPLE, producer_env, stream_args

EXIT_STREAM_LEASED = 3


def start_first(env: dict[str, str]) -> subprocess.Popen:
    """A producer with a long interval, once its first chunk is written: it holds the lease
    while it waits for its next slot."""
    proc = subprocess.Popen(stream_args("--interval", "30"), cwd=REPO, env=env,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if json.loads(line)["message"] == "chunk_written":
            return proc
    raise AssertionError(f"the first producer exited with {proc.wait()}")


def run(env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(stream_args("--interval", "0", *extra), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def chunk_keys(s3, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="stream_chunks/")
                  .get("Contents", []))


def fresh_bucket(endpoint: str):
    s3 = boto3.client("s3", endpoint_url=endpoint)
    bucket = f"data-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    return s3, bucket


def test_a_second_producer_on_the_same_stream_refuses_to_start_until_the_first_is_done(
        moto_endpoint: str, aws_credentials: None):
    s3, bucket = fresh_bucket(moto_endpoint)
    env = producer_env(moto_endpoint, bucket)
    first = start_first(env)
    try:
        second = run(env)
        assert second.returncode == EXIT_STREAM_LEASED, second.stderr
        (line,) = second.stderr.strip().splitlines()
        assert line.startswith("error: another producer holds the stream ")
        assert "--take-over" in line
        assert chunk_keys(s3, bucket) == [chunk_keys(s3, bucket)[0]]  # the first's chunk only
    finally:
        first.send_signal(signal.SIGTERM)
        first.stderr.read()
        assert first.wait(timeout=60) == 0

    done = run(env)  # the first one let go of the lease when it stopped
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines()]
    assert events[0]["message"] == "stream_started" and events[0]["next_row"] == 500
    assert len(chunk_keys(s3, bucket)) == 6


def test_a_crashed_producers_lease_is_taken_over_with_take_over(
        moto_endpoint: str, aws_credentials: None):
    s3, bucket = fresh_bucket(moto_endpoint)
    env = producer_env(moto_endpoint, bucket)
    crashed = start_first(env)
    crashed.kill()  # SIGKILL: its lease stays in the state object until it expires
    crashed.wait(timeout=30)

    refused = run(env)
    assert refused.returncode == EXIT_STREAM_LEASED, refused.stderr
    taken = run(env, "--take-over")
    assert taken.returncode == 0, taken.stderr

    keys = chunk_keys(s3, bucket)
    assert [k.split("-")[1] for k in keys] == [f"{n:08d}" for n in range(1, 7)]
    rows = []
    for key in keys:
        rows += s3.get_object(Bucket=bucket, Key=key)["Body"].read().splitlines(
            keepends=True)[1:]
    assert rows == (SAMPLE / "transactions.csv").read_bytes().splitlines(keepends=True)[1:]
    state = json.loads(s3.get_object(Bucket=bucket, Key="_state/producer.json")["Body"].read())
    assert (state["next_row"], state["lease_owner"]) == (3000, "")
