"""A CustomerImportance that cannot be used is one error, ``parsing.ReferenceRejected``, the
same for the worker's start-up and for ``replay``: too large, access denied, empty, not UTF-8,
not CSV, or a header without a required column. Each case through both readers (in-process
moto, IAM enforced for the access-denied case), then the real commands: one line on stderr
naming the object and the reason, exit code 2, no traceback, and a replay changes nothing."""

from __future__ import annotations

import threading

import boto3
import psycopg2
import pytest
from moto import mock_aws
from moto.core import set_initial_no_auth_action_count

from spark_detector.config import WorkerSettings
from spark_detector.ops.replay_archive import read_importance
from spark_detector.parsing import ReferenceRejected
from spark_detector.spark.reference_weights import load_key_weights
from tests.support.workers import AwsResources, command, error_lines, worker_env

BUCKET = "reference-cases"
KEY = "reference/CustomerImportance.csv"
WHERE = f"s3://{BUCKET}/{KEY}"
GOOD = b"Source,Target,Weight,typeTrans,fraud\n'C1','M1',2.5,'es_food',0\n"
LIMIT = 100

CASES = {  # id: (the object's bytes, the reason the error must give)
    "too-large": (GOOD + b"'C2','M2',1.0,'es_food',0\n" * 4,
                  "too large: 167 bytes, the limit is 100 (WORKER_MAX_REFERENCE_BYTES)"),
    "empty": (b"", "empty: no header line"),
    "not-utf8": (b"Source,Target,Weight,typeTrans,fraud\n'C\xff','M1',1,'x',0\n",
                 "not UTF-8: invalid byte at offset 39"),
    "not-csv": (b"PK\x03\x04\x00\x00binary", "not CSV: contains NUL characters"),
    "missing-column": (b"Source,Target,typeTrans,fraud\n'C1','M1','es_food',0\n",
                       "header lacks required columns: Weight"),
}


def worker_reads(s3) -> None:
    def no_cache():  # the weight cache is unreachable: the object itself is read
        raise psycopg2.OperationalError("no database in this test")

    settings = WorkerSettings(bucket=BUCKET, queue_url="q", database_url="x",
                              max_reference_bytes=LIMIT)
    load_key_weights(s3, no_cache, settings, threading.Event())


def replay_reads(s3) -> None:
    settings = WorkerSettings(bucket=BUCKET, queue_url="q", database_url="x",
                              max_reference_bytes=LIMIT)
    read_importance(s3, settings, None)


READERS = {"worker": worker_reads, "replay": replay_reads}


@pytest.fixture
def s3(aws):
    client = boto3.client("s3", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("case", CASES)
def test_each_unusable_reference_is_one_error_naming_the_object_and_the_reason(s3, reader, case):
    data, reason = CASES[case]
    s3.put_object(Bucket=BUCKET, Key=KEY, Body=data)

    with pytest.raises(ReferenceRejected) as rejected:
        READERS[reader](s3)

    assert (rejected.value.key, rejected.value.reason) == (WHERE, reason)


@pytest.mark.parametrize("reader", READERS)
def test_a_reference_the_caller_may_not_read_is_access_denied(aws_credentials, reader):
    # moto enforces IAM after the set-up calls: a user without any policy is refused
    @set_initial_no_auth_action_count(4)
    def refused() -> ReferenceRejected:
        admin = boto3.client("s3", region_name="us-east-1")
        admin.create_bucket(Bucket=BUCKET)
        admin.put_object(Bucket=BUCKET, Key=KEY, Body=GOOD)
        iam = boto3.client("iam", region_name="us-east-1")
        iam.create_user(UserName="worker")
        key = iam.create_access_key(UserName="worker")["AccessKey"]
        s3 = boto3.client("s3", region_name="us-east-1", aws_access_key_id=key["AccessKeyId"],
                          aws_secret_access_key=key["SecretAccessKey"])
        with pytest.raises(ReferenceRejected) as rejected:
            READERS[reader](s3)
        return rejected.value

    with mock_aws():
        error = refused()
    assert error.key == WHERE and error.reason.startswith("access denied: check that the"
                                                          " worker's role has s3:GetObject")


# --- the real commands -------------------------------------------------------------------


@pytest.fixture
def bad_reference(moto_endpoint, migrated_database_url) -> tuple[dict[str, str], AwsResources]:
    """A worker's environment whose bucket holds a CustomerImportance that is not UTF-8."""
    resources = AwsResources.create(moto_endpoint)
    resources.s3.put_object(Bucket=resources.bucket, Key=KEY, Body=CASES["not-utf8"][0])
    return worker_env(resources, migrated_database_url), resources


def said_once(result, expected: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    # the command's own lines (the JVM's start-up notes are on stderr too)
    assert [line for line in error_lines(result)
            if line.startswith(("spark_detector", "replay"))] == [expected]


@pytest.mark.spark
def test_the_worker_refuses_to_start_with_one_line_and_exit_code_2(bad_reference):
    env, resources = bad_reference

    result = command(env, "run", timeout=300)

    said_once(result, f"spark_detector: refusing to start: CustomerImportance "
                      f"s3://{resources.bucket}/{KEY}: not UTF-8: invalid byte at offset 39")


def database_state(url: str) -> list[tuple]:
    """Every schema and table of the database, and whether a rebuild is recorded."""
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT table_schema, table_name FROM information_schema.tables"
                    " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
                    " UNION ALL SELECT schema_name, '' FROM information_schema.schemata"
                    " ORDER BY 1, 2")
        state = cur.fetchall()
        cur.execute("SELECT count(*) FROM rebuild_in_progress")
        state.append(("rebuild_in_progress", cur.fetchone()[0]))
    conn.close()
    return state


@pytest.mark.parametrize("args", [("--into", "whatif", "--importance", "{file}"),
                                  ("--replace",)], ids=["into-with-importance", "replace"])
def test_a_replay_refuses_with_one_line_and_exit_code_2_and_changes_nothing(
        bad_reference, migrated_database_url, tmp_path, args):
    env, resources = bad_reference
    local = tmp_path / "importance.csv"
    local.write_bytes(CASES["missing-column"][0])
    before = database_state(migrated_database_url)

    result = command(env, "replay", *(a.format(file=local) for a in args), timeout=120)

    where, reason = ((local, CASES["missing-column"][1]) if "--importance" in args
                     else (f"s3://{resources.bucket}/{KEY}", CASES["not-utf8"][1]))
    said_once(result, f"replay: CustomerImportance {where}: {reason}")
    assert database_state(migrated_database_url) == before
