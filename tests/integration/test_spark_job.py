"""The Spark job against the pure-Python reference, with S3 served by a moto server.

Every test runs twice: with the chunks fetched by the driver (local mode's default) and by
the executors (a cluster's). PySpark runs the executors' Python code in separate worker
processes, where moto's in-process ``mock_aws`` does not exist: both fetch chunks over HTTP
from a ``ThreadedMotoServer`` instead.
"""

from __future__ import annotations

import random
import uuid

import boto3
import pytest

from spark_detector.chunk_aggregates import key_weights
from spark_detector.parsing import parse_chunk, parse_customer_importance
from spark_detector.spark.batch_result import NO_WEIGHTS, BatchResult, weight_table
from spark_detector.spark.fetch import FetchSpec, fetch_chunk, fetch_chunks, fetched_frame
from spark_detector.spark.job import aggregate_batch
from tests.conftest import TEST_DATA
from tests.reference_model import (
    ChunkRejectedWhole,
    aggregate_rows,
    pairs_from_copy_text,
    read_chunk,
    read_weights,
)

pytestmark = pytest.mark.spark

HEADER = "step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(scope="module")
def s3(moto_endpoint: str):
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", **CREDENTIALS)


@pytest.fixture
def bucket(s3) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["driver", "executors"])
def fetch_spec(request, bucket: str, moto_endpoint: str) -> FetchSpec:
    # Explicit credentials: the Spark workers were started before this test set any env.
    return FetchSpec(bucket, region="us-east-1", endpoint_url=moto_endpoint,
                     access_key_id="testing", secret_access_key="testing",
                     on_driver=request.param == "driver")


def chunk_text(rows: list[str], header: str = HEADER, newline: str = "\n") -> bytes:
    return (newline.join([header, *rows]) + newline).encode()


def banksim_rows(rng: random.Random, n: int, quoted: bool = True) -> list[str]:
    """BankSim-like rows; few customers and merchants, so pairs repeat within a chunk."""
    q = "'" if quoted else ""
    categories = ["es_transportation", "es_food", "es_health"]
    return [
        f"{rng.randrange(3)},{q}C{rng.randrange(25)}{q},{q}{rng.randrange(7)}{q},"
        f"{q}{rng.choice('FMEU')}{q},{q}28007{q},{q}M{rng.randrange(4)}{q},{q}28007{q},"
        f"{q}{rng.choice(categories)}{q},{rng.randrange(0, 50000) / 100},0"
        for _ in range(n)
    ]


def importance_of(rows: list[str], rng: random.Random) -> bytes:
    """CustomerImportance for some of the rows' keys, each key usually on several rows."""
    lines = ["Source,Target,Weight,typeTrans,fraud"]
    for row in rows:
        f = row.split(",")
        if rng.random() < 0.7:  # the other keys stay unweighted
            weight = f"{rng.randrange(0, 10**9) / 10**7}"  # more places than the 6 kept
            lines.append(f"{f[1]},{f[5]},{weight},{f[7]},0")
    lines.append("'C1','M1',not-a-weight,'es_food',0")  # counted and skipped
    return ("\r\n".join(lines) + "\r\n").encode()


def put(s3, bucket: str, chunks: dict[str, bytes]) -> None:
    for key, data in chunks.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)


def assert_matches_reference(result: BatchResult, chunks: dict[str, bytes],
                             importance: bytes | None) -> None:
    """Every chunk's Spark result equals the reference model's own reading and aggregation
    of it (tests/reference_model.py, weighted by its own reading of ``importance``), and
    gives each rejected row the parser's reason."""
    weights = read_weights(importance) if importance is not None else {}
    for key, data in chunks.items():
        try:
            read = read_chunk(data)
        except ChunkRejectedWhole:
            assert key in result.rejected_chunks and key not in result.aggregates, key
            continue
        expected = aggregate_rows(key, read.rows, weights, len(read.rejected))
        assert result.aggregates[key] == expected.without_pairs(), key
        # what the engine will COPY is the reference's pairs, value for value, in order
        assert pairs_from_copy_text(result.prepared[key].copy_text) == expected.pairs, key
        assert result.prepared[key].pairs == len(expected.pairs), key
        assert [r.row for r in result.rejected_rows[key]] == list(read.rejected), key
        assert result.rejected_rows[key] == parse_chunk(key, data).rejected, key


def test_spark_aggregation_equals_the_python_reference(spark, s3, bucket, fetch_spec):
    rng = random.Random(5)
    good = banksim_rows(rng, 400)
    unquoted = banksim_rows(rng, 200, quoted=False)
    crlf = banksim_rows(rng, 200)
    with_bad_rows = banksim_rows(rng, 100)
    importance = importance_of(good + unquoted + crlf + with_bad_rows, rng)
    with_bad_rows[10:10] = ["0,'C1','4','F','28007','','28007','es_food',1.00,0", "", "1,2,3"]
    with_bad_rows[50:50] = ["0,'C2','4','F','28007','M1','28007','es_food',-3,0"]
    reordered = "amount,merchant,customer,category,gender,step,age,zipcodeOri,zipMerchant,fraud,x"
    chunks = {
        "stream_chunks/chunk-01.csv": chunk_text(good),
        "stream_chunks/chunk-02.csv": chunk_text(unquoted),
        "stream_chunks/chunk-03.csv": chunk_text(crlf, newline="\r\n"),
        "stream_chunks/chunk-04.csv": chunk_text(with_bad_rows),
        "stream_chunks/chunk-05.csv": chunk_text([], header=HEADER.replace("merchant,", "")),
        "stream_chunks/chunk-06.csv": b"\xef\xbb\xbf" + chunk_text(
            ["7.5,'M2','C3','es_food','F',0,'3','1','2',0,extra"], header=reordered
        ),
        "stream_chunks/chunk-07.csv": chunk_text([]),  # header only: valid, no rows
        "stream_chunks/chunk-08.csv": (TEST_DATA / "banksim-first-200.csv").read_bytes(),
    }
    put(s3, bucket, chunks)

    weights = key_weights(parse_customer_importance(importance).rows)
    result = aggregate_batch(spark, fetch_spec, sorted(chunks), weight_table(weights))

    assert_matches_reference(result, chunks, importance)
    assert set(result.aggregates) == set(chunks) - {"stream_chunks/chunk-05.csv"}
    assert result.rejected_chunks == {
        "stream_chunks/chunk-05.csv": "header lacks required columns: merchant"
    }
    assert result.aggregates["stream_chunks/chunk-03.csv"].rows_good == 200
    assert [r.reason for r in result.rejected_rows["stream_chunks/chunk-04.csv"]] == [
        "empty merchant", "empty line", "expected 10 fields, got 3", "amount -3 is negative",
    ]
    assert any(p.weighted_count for p in pairs_from_copy_text(
        result.prepared["stream_chunks/chunk-01.csv"].copy_text))


# identifiers out of the rules (too long in characters, a control character, a formula's
# first character) and some just within them
BAD_IDENTIFIERS = ["'" + "C" * 65 + "'", "'" + "\U0001f600" * 65 + "'", "'x\x01'", "'x\t1'",
                   "'x\x85'", "'=x'", " '+x' ", "-x", "'@x'"]
FAIR_IDENTIFIERS = ["'" + "\U0001f600" * 64 + "'", "'x=1'", "'x\u00a0'", "'\uff1dx'"]
NASTY_FIELDS = {
    "customer": ["'C1'", "C1", " 'C2' ", "''", "", "  ", "'", "'C3", "\t'C1'\t", "'C 4'",
                 *BAD_IDENTIFIERS[:5], *FAIR_IDENTIFIERS[:2]],
    "merchant": ["'M1'", "M1", "''", "", "'M2' ", "\"M3\"", "'M1''", *BAD_IDENTIFIERS[5:],
                 *FAIR_IDENTIFIERS[2:]],
    "category": ["'es_food'", "es_food", "'es_bar'", "''", *BAD_IDENTIFIERS[2:5]],
    "gender": ["'F'", "'M'", "F", "''", " 'U' ", *BAD_IDENTIFIERS[::4]],
    "amount": ["4.55", "'4.55'", " 12 ", "1.005", "2.0049", ".5", "7.", "+3", "-0.00", "-0.001",
               "-1", "abc", "", "''", "1e3", "inf", "-Infinity", "NaN", "1.2.3", "0x10",
               "9999999999999999.994", "9999999999999999.995", "12345678901234567", "١٢",
               "4.55\r", " ", "00012.50", "-", ".", "+.5"],
}


def nasty_line(rng: random.Random) -> str:
    fields = [
        "0",
        rng.choice(NASTY_FIELDS["customer"]),
        "'4'",
        rng.choice(NASTY_FIELDS["gender"]),
        "'28007'",
        rng.choice(NASTY_FIELDS["merchant"]),
        "'28007'",
        rng.choice(NASTY_FIELDS["category"]),
        rng.choice(NASTY_FIELDS["amount"]),
        "0",
    ]
    shape = rng.random()
    if shape < 0.05:
        fields = fields[: rng.randrange(10)]
    elif shape < 0.08:
        fields.append("extra")
    line = ",".join(fields)
    return "" if shape > 0.98 else line


def test_every_row_rule_and_reason_agrees_with_the_reference(spark, s3, bucket, fetch_spec):
    rng = random.Random(11)
    lines = [nasty_line(rng) for _ in range(3000)]
    chunks = {
        "stream_chunks/nasty-lf.csv": chunk_text(lines),
        "stream_chunks/nasty-crlf.csv": chunk_text(lines, newline="\r\n"),
        "stream_chunks/nasty-no-final-newline.csv": chunk_text(lines)[:-1],
    }
    put(s3, bucket, chunks)
    importance = (
        b"Source,Target,Weight,typeTrans,fraud\n'C1','M1',2,'es_food',0\n'C1','M1',3,'es_food',0\n"
        b"C2,M2,0.1234567,es_bar,0\n"
    )

    weights = key_weights(parse_customer_importance(importance).rows)
    result = aggregate_batch(spark, fetch_spec, sorted(chunks), weight_table(weights))

    assert_matches_reference(result, chunks, importance)
    reasons = {r.reason for r in result.rejected_rows["stream_chunks/nasty-lf.csv"]}
    assert {"empty customer", "empty merchant", "empty amount", "empty line",
            "amount 'inf' is not a finite number", "amount -1 is negative",
            "amount 9999999999999999.995 is too large for decimal(18,2)",
            "customer is longer than 64 characters (65)", "customer contains a control character",
            "merchant starts with '=', which a spreadsheet reads as a formula",
            "category contains a control character",
            "gender is longer than 64 characters (65)"} <= reasons
    assert result.aggregates["stream_chunks/nasty-lf.csv"].rows_good > 100


def test_a_one_chunk_batch_single_stage_equals_the_reference(spark, s3, bucket, fetch_spec):
    # A batch of one chunk is aggregated without a shuffle (one partition); rows of one pair
    # far apart in the chunk must still meet in one group
    rng = random.Random(8)
    rows = banksim_rows(rng, 3000)
    chunks = {"stream_chunks/only.csv": chunk_text([*rows, "", "1,2,3", *rows[:50]])}
    put(s3, bucket, chunks)
    importance = importance_of(rows, rng)

    weights = key_weights(parse_customer_importance(importance).rows)
    result = aggregate_batch(spark, fetch_spec, list(chunks), weight_table(weights))

    assert_matches_reference(result, chunks, importance)
    assert result.aggregates["stream_chunks/only.csv"].rows_good == 3050


def test_whole_chunk_rejects_and_missing_objects_do_not_stop_the_batch(
    spark, s3, bucket, fetch_spec
):
    good = chunk_text(banksim_rows(random.Random(3), 50))
    chunks = {
        "stream_chunks/a-good.csv": good,
        "stream_chunks/b-empty.csv": b"",
        "stream_chunks/c-latin1.csv": chunk_text(["0,'C1','4','F','1','Mé','1','x',1,0"])
        .decode()
        .encode("latin-1"),
        "stream_chunks/d-binary.csv": b"PK\x03\x04\x00\x00" + good,
        "stream_chunks/e-good.csv": good,
    }
    put(s3, bucket, chunks)
    keys = [*chunks, "stream_chunks/f-never-uploaded.csv", "stream_chunks/a-good.csv"]
    latin1_at = len(HEADER + "\n0,'C1','4','F','1','M")  # where the é is

    result = aggregate_batch(spark, fetch_spec, keys, NO_WEIGHTS)

    assert result.rejected_chunks == {
        "stream_chunks/b-empty.csv": "empty: no header line",
        "stream_chunks/c-latin1.csv": f"not UTF-8: invalid byte at offset {latin1_at}",
        "stream_chunks/d-binary.csv": "not CSV: contains NUL characters",
    }
    assert result.missing_chunks == {
        "stream_chunks/f-never-uploaded.csv": "object does not exist"}
    assert sorted(result.aggregates) == ["stream_chunks/a-good.csv", "stream_chunks/e-good.csv"]
    assert_matches_reference(result, chunks, None)


def test_fetch_chunk_reads_checks_and_reports_a_missing_object(s3, bucket):
    s3.put_object(Bucket=bucket, Key="stream_chunks/x.csv", Body=chunk_text(["1,2"]))
    row = fetch_chunk(s3, bucket, "stream_chunks/x.csv")
    assert row[:5] == ("stream_chunks/x.csv", "ok", None, 1, 10)
    assert row[-1] == "1,2"
    assert fetch_chunk(s3, bucket, "stream_chunks/none.csv")[:3] == (
        "stream_chunks/none.csv", "missing", "object does not exist",
    )


def test_fetch_spec_takes_region_and_endpoint_from_the_environment_but_no_secrets():
    spec = FetchSpec.from_env("bkt", {"AWS_DEFAULT_REGION": "eu-west-1",
                                      "AWS_ENDPOINT_URL": "http://127.0.0.1:5000",
                                      "AWS_SECRET_ACCESS_KEY": "s3cr3t"})
    assert spec == FetchSpec("bkt", region="eu-west-1", endpoint_url="http://127.0.0.1:5000")
    assert FetchSpec.from_env("bkt", {"AWS_REGION": "ap-south-1"}).region == "ap-south-1"
    assert FetchSpec.from_env("bkt", {}) == FetchSpec("bkt", region="us-east-1")
    assert "testing" not in repr(FetchSpec("b", access_key_id="testing",
                                           secret_access_key="testing"))


def test_chunks_fetched_by_the_driver_reach_spark_without_a_python_worker(spark):
    # Given the rows of three fetched chunks, held by the driver
    rows = [(f"stream_chunks/{n}.csv", "ok", None, 1, 10, 1, 5, 7, 3, 8, "0,'C1'")
            for n in range(3)]

    fetched = fetched_frame(spark, rows)

    # Then the JVM reads them itself (Arrow), spread over the cores, whereas the executors'
    # fetch runs in Python workers (a PythonRDD in its lineage)
    lineage = fetched._jdf.queryExecution().toRdd().toDebugString()
    assert "PythonRDD" not in lineage
    assert fetched.rdd.getNumPartitions() == min(3, spark.sparkContext.defaultParallelism)
    assert [tuple(row) for row in fetched.collect()] == rows
    executors = fetch_chunks(spark, FetchSpec("bucket"), [row[0] for row in rows])
    assert "PythonRDD" in executors._jdf.queryExecution().toRdd().toDebugString()
