"""What counts as an outage of S3 or Spark (not the chunk's failure), the probe that tells a
chunk S3 denies from a role that lost its permission, and the gate's backoff."""

from __future__ import annotations

import logging
import threading
from io import BytesIO

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from botocore.response import StreamingBody

from spark_detector.config import WorkerSettings
from spark_detector.failpoints import InjectedFailure, failpoint
from spark_detector.parsing import ReferenceRejected
from spark_detector.s3_errors import S3UnavailableError, s3_outage_reason
from spark_detector.spark.reference_weights import load_key_weights
from spark_detector.worker import outages
from spark_detector.worker.errors import S3, Outage
from spark_detector.worker.outages import OutageGate, gate_delay, probe_s3
from tests.support.fakes import stubbed_s3

SETTINGS = WorkerSettings(bucket="b", queue_url="q", database_url="x", max_reference_bytes=100)


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


@pytest.mark.parametrize("error", [
    EndpointConnectionError(endpoint_url="http://s3"),
    ConnectTimeoutError(endpoint_url="http://s3"),
    ReadTimeoutError(endpoint_url="http://s3"),
    NoCredentialsError(),
    client_error("InternalError", 500),
    client_error("SlowDown", 503),
    client_error("ExpiredToken", 400),
    client_error("InvalidAccessKeyId", 403),
    client_error("NoSuchBucket", 404),
    client_error("SomethingNew", 502),  # any 5xx
    client_error("TooManyRequests", 429),
])
def test_s3_errors_no_chunk_causes_are_outages(error):
    assert s3_outage_reason(error) is not None


@pytest.mark.parametrize("error", [
    client_error("NoSuchKey", 404),
    client_error("PreconditionFailed", 412),
    client_error("AccessDenied", 403),  # one object, or the role: probe_s3 tells
    InjectedFailure("injected failure at spark_fetch for k"),
    ValueError("a bug"),
])
def test_errors_of_the_chunk_or_its_data_are_no_outage(error):
    assert s3_outage_reason(error) is None


def test_an_outage_is_found_in_what_an_error_was_raised_from():
    try:
        try:
            raise client_error("InternalError", 500)
        except ClientError as exc:
            raise RuntimeError("the batch failed") from exc
    except RuntimeError as outer:
        assert "InternalError" in s3_outage_reason(outer)


def test_an_outage_is_found_in_a_spark_tasks_report():
    """On a cluster the executor's error reaches the driver as text inside Spark's report."""
    report = ("org.apache.spark.api.python.PythonException: Traceback (most recent call last):"
              "\n  File \"chunk_fetch.py\", line 120, in fetch_chunk\n"
              "spark_detector.outages.S3UnavailableError: s3://b/k: SlowDown: reduce your rate\n"
              "\tat org.apache.spark.api.python.BasePythonRunner...")
    assert s3_outage_reason(RuntimeError(report)) == "s3://b/k: SlowDown: reduce your rate"
    assert s3_outage_reason(S3UnavailableError("s3://b/k: x")) == "s3://b/k: x"


def listing(*keys: str, size: int = 10) -> dict:
    return {"Contents": [{"Key": k, "Size": size} for k in keys]}


def test_the_probe_passes_when_another_chunk_can_be_read():
    s3, stub = stubbed_s3()
    stub.add_response("list_objects_v2", listing("p/a.csv", "p/b.csv"))
    stub.add_response("get_object", {"Body": StreamingBody(BytesIO(b"s"), 1)},
                      {"Bucket": "b", "Key": "p/b.csv", "Range": "bytes=0-0"})
    with stub:
        assert probe_s3(s3, "b", "p/", avoid=["p/a.csv"]) is None


def test_a_role_denied_on_every_chunk_is_an_outage_naming_the_permission():
    s3, stub = stubbed_s3()
    stub.add_response("list_objects_v2", listing("p/a.csv", "p/b.csv"))
    stub.add_client_error("get_object", service_error_code="AccessDenied", http_status_code=403)
    with stub:
        outage = probe_s3(s3, "b", "p/", avoid=["p/a.csv"])
    assert outage.dependency == S3
    assert outage.reason == "s3:GetObject denied on arn:aws:s3:::b/p/*"
    assert "s3:GetObject on arn:aws:s3:::b/p/*" in outage.hint


def test_a_listing_denied_is_an_outage_naming_list_bucket():
    s3, stub = stubbed_s3()
    stub.add_client_error("list_objects_v2", service_error_code="AccessDenied",
                          http_status_code=403)
    with stub:
        outage = probe_s3(s3, "b", "p/")
    assert outage.reason == "s3:ListBucket denied on arn:aws:s3:::b"


def test_nothing_else_to_read_or_a_chunk_gone_meanwhile_means_s3_answers():
    s3, stub = stubbed_s3()
    stub.add_response("list_objects_v2", listing("p/a.csv"))
    stub.add_response("list_objects_v2", listing("p/empty.csv", size=0))
    stub.add_response("list_objects_v2", listing("p/b.csv"))
    stub.add_client_error("get_object", service_error_code="NoSuchKey", http_status_code=404)
    with stub:
        assert probe_s3(s3, "b", "p/", avoid=["p/a.csv"]) is None
        assert probe_s3(s3, "b", "p/") is None  # a 0-byte object has no byte 0
        assert probe_s3(s3, "b", "p/") is None


def test_the_probe_reports_s3_down():
    s3, stub = stubbed_s3()
    stub.add_client_error("list_objects_v2", service_error_code="ServiceUnavailable",
                          http_status_code=503)
    with stub:
        outage = probe_s3(s3, "b", "p/")
    assert outage is not None and "ServiceUnavailable" in outage.reason


def test_the_gate_waits_double_from_half_a_second_to_thirty():
    assert [gate_delay(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]


class FakeStop(threading.Event):
    """A stop event whose waits are recorded, not slept."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        return self.is_set()


def test_the_gate_probes_with_growing_waits_over_episodes_until_work_succeeds(caplog):
    caplog.set_level(logging.INFO, logger=outages.__name__)
    stop = FakeStop()
    now = [100.0]
    gate = OutageGate(stop, "ns", clock=lambda: now[0])
    answers = iter([Outage(S3, "down"), Outage(S3, "down"), None, None])
    gate.trip(Outage(S3, "connection refused"), ["k1"])
    gate.wait(lambda: next(answers))
    assert gate.down is None and stop.waits == [0.5, 1, 2]
    # the probe answered but the work failed again: a new episode waits longer
    now[0] = 130.0
    gate.trip(Outage(S3, "connection refused"), ["k1"])
    gate.wait(lambda: next(answers))
    assert stop.waits == [0.5, 1, 2, 4]
    gate.settled()
    records = [r for r in caplog.records if r.name == outages.__name__]
    trips = [r for r in records if r.getMessage().startswith("s3 unavailable")]
    assert [(r.episode, r.outage_s) for r in trips] == [(1, 0.0), (2, 30.0)]
    assert records[-1].getMessage() == "dependency outage over: resuming"
    # a new outage starts from the shortest wait again
    gate.trip(Outage(S3, "again"), [])
    gate.wait(lambda: None)
    assert stop.waits[-1] == 0.5


def test_the_gate_returns_at_once_when_a_stop_is_asked():
    stop = FakeStop()
    stop.set()
    gate = OutageGate(stop, "ns")
    gate.trip(Outage(S3, "down"), [])
    gate.wait(lambda: pytest.fail("no probe after a stop"))
    assert gate.down is not None  # the loop ends; the held messages are given back


def test_an_armed_fault_raises_only_while_its_file_exists_and_counts(tmp_path, monkeypatch):
    switch = tmp_path / "s3-down"
    monkeypatch.setenv("WORKER_FAULT", f"spark_fetch@InternalError@{switch},"
                                       f"spark_job@spark@{switch}")
    failpoint("spark_fetch", "k")  # no file: off
    switch.touch()
    with pytest.raises(ClientError) as raised:
        failpoint("spark_fetch", "k")
    assert s3_outage_reason(raised.value) is not None
    with pytest.raises(InjectedFailure):
        failpoint("spark_job")
    assert switch.read_text() == "spark_fetch\nspark_job\n"
    switch.unlink()
    failpoint("spark_fetch", "k")
    assert not switch.exists()


def test_the_reference_is_waited_for_while_s3_is_out_at_start_up():
    s3, stub = stubbed_s3()
    stub.add_client_error("head_object", service_error_code="503", http_status_code=503)
    stub.add_response("head_object", {"ContentLength": 101})
    stop = FakeStop()
    with stub, pytest.raises(ReferenceRejected, match="too large: 101 bytes"):
        load_key_weights(s3, lambda: None, SETTINGS, stop)  # looked at again after a wait
    assert stop.waits == [0.5]



def test_a_probe_in_a_hard_outage_makes_one_attempt():
    """The probes' client (``__main__.PROBE_CONFIG``) tries once: with the chunks' client
    (``BOTO_CONFIG``, 8 attempts with backoff) one probe of an endpoint that resets every
    connection took 35-70 s, and the worker resumed that long after S3 came back."""
    import boto3

    from spark_detector.__main__ import PROBE_CONFIG
    from tests.support.tcp_proxy import TcpProxy

    proxy = TcpProxy("http://127.0.0.1:9")  # never forwarded: down from the start
    proxy.down()
    try:
        client = boto3.client("s3", endpoint_url=proxy.url, region_name="us-east-1",
                              aws_access_key_id="k", aws_secret_access_key="s",
                              config=PROBE_CONFIG)
        outage = probe_s3(client, "b", "stream_chunks/")
    finally:
        proxy.close()
    assert outage is not None and outage.dependency == S3
    # one attempt opens two connections here (the first one reset), attempts n open n + 1:
    # the chunks' client (BOTO_CONFIG) opens 9
    assert proxy.reset <= 2
