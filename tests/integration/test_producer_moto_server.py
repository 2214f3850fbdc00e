"""``python -m producer stream`` as a real process against a moto S3 server on loopback."""

from __future__ import annotations

import json
import signal
import subprocess
import uuid

import boto3

from tests.support.producers import REPO, SAMPLE, producer_env, stream_args


def test_sigterm_stops_after_the_current_chunk_and_a_restart_finishes_the_file(
    moto_endpoint: str, aws_credentials: None,
):
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    bucket = f"data-{uuid.uuid4().hex[:10]}"  # the moto server is shared by the session
    s3.create_bucket(Bucket=bucket)
    # versioned: every put of an object is kept, so S3 itself says what was uploaded when
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    env = producer_env(moto_endpoint, bucket)

    # A long interval: after the first chunk the producer is waiting for its next slot.
    proc = subprocess.Popen(stream_args("--interval", "30"), cwd=REPO, env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if json.loads(line)["message"] == "chunk_written":
                break
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    last = json.loads(rest.splitlines()[-1])
    assert (last["message"], last["chunks_sent"], last["next_row"]) == ("stream_stopped", 1, 500)

    done = subprocess.run(stream_args("--interval", "0"), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines()]
    assert events[0]["message"] == "stream_started" and events[0]["next_row"] == 500
    assert events[-1]["message"] == "stream_finished" and events[-1]["next_row"] == 3000
    assert events[-1]["reference_uploaded"] is False  # identical, already there
    # S3 agrees: the reference was put once (by the first run), with the file's bytes
    versions = s3.list_object_versions(Bucket=bucket, Prefix="reference/")["Versions"]
    assert [v["Key"] for v in versions] == ["reference/CustomerImportance.csv"]
    reference = s3.get_object(Bucket=bucket, Key="reference/CustomerImportance.csv")
    assert reference["Body"].read() == (SAMPLE / "CustomerImportance.csv").read_bytes()

    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="stream_chunks/")
                  ["Contents"])
    assert len(keys) == 6
    rows = []
    for key in keys:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        rows.extend(body.splitlines(keepends=True)[1:])
    assert rows == (SAMPLE / "transactions.csv").read_bytes().splitlines(keepends=True)[1:]
