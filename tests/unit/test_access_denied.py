"""S3 answers 403 AccessDenied, not 404, for a missing key when the caller may not list the
bucket: a chunk is then treated like a missing one, and the reference gets a clear error."""

import threading

import pytest

from spark_detector.config import WorkerSettings
from spark_detector.parsing import ReferenceRejected
from spark_detector.s3_errors import S3UnavailableError
from spark_detector.spark.fetch import MISSING, REJECTED, fetch_chunk
from spark_detector.spark.reference_weights import load_key_weights
from tests.support.fakes import stubbed_s3


def test_a_chunk_answered_with_access_denied_is_treated_as_missing_with_the_reason():
    s3, stub = stubbed_s3()
    stub.add_client_error("get_object", service_error_code="AccessDenied",
                          http_status_code=403)
    with stub:
        row = fetch_chunk(s3, "b", "stream_chunks/chunk-00000001-x.csv")
    assert row[1] == MISSING and "s3:ListBucket" in row[2]


def test_throttling_is_raised_as_an_s3_outage_not_a_chunk_answer():
    s3, stub = stubbed_s3()
    stub.add_client_error("get_object", service_error_code="SlowDown", http_status_code=503)
    with stub, pytest.raises(S3UnavailableError, match=r"s3://b/k: SlowDown"):
        fetch_chunk(s3, "b", "k")


def test_a_chunk_with_more_rows_than_the_limit_is_rejected_whole_as_too_large():
    s3, stub = stubbed_s3()
    body = b"step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud\n"
    body += b"0,'C1','4','F','1','M1','1','x',1.00,0\n" * 3
    from io import BytesIO

    from botocore.response import StreamingBody

    stub.add_response("get_object", {"Body": StreamingBody(BytesIO(body), len(body))})
    with stub:
        row = fetch_chunk(s3, "b", "k", max_rows=2)
    assert row[1] == REJECTED and row[2] == "too large: 3 rows, the limit is 2"


SETTINGS = WorkerSettings(bucket="b", queue_url="q", database_url="x", max_reference_bytes=100)


def load(s3):
    def no_database():  # the object is refused before the weight cache is looked at
        raise AssertionError("the database was consulted")

    return load_key_weights(s3, no_database, SETTINGS, threading.Event())


def test_access_denied_on_the_reference_names_the_likely_iam_cause():
    s3, stub = stubbed_s3()
    stub.add_client_error("head_object", service_error_code="403", http_status_code=403)
    with stub, pytest.raises(ReferenceRejected, match=r"s3:GetObject.*s3:ListBucket"):
        load(s3)


def test_an_oversized_reference_is_a_start_up_error_before_it_is_read():
    s3, stub = stubbed_s3()
    stub.add_response("head_object", {"ContentLength": 101})  # no get_object is expected
    with stub, pytest.raises(ReferenceRejected, match=r"too large: 101 bytes.*"
                                                     r"WORKER_MAX_REFERENCE_BYTES"):
        load(s3)
