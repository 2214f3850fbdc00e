"""The Lambda handler end to end against moto's SQS: realistic S3 events in, messages out."""

from __future__ import annotations

import ast
import copy
import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from chunk_contract.message import ChunkMessage
from chunk_contract.sqs_batch import EnqueueFailed
from lambda_trigger import app
from tests.conftest import EVENTS, REPO_ROOT

BUCKET = "txn-pipeline-data"


@dataclass
class FakeLambdaContext:
    """The attributes Powertools' Logger reads from a real LambdaContext."""

    function_name: str = "chunk-trigger"
    memory_limit_in_mb: int = 128
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:chunk-trigger"
    aws_request_id: str = "52fdfc07-2182-154f-163f-5f0f9a621d72"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def load_event(name: str) -> dict:
    return json.loads((EVENTS / name).read_text(encoding="utf-8"))


def chunk_event(count: int) -> dict:
    """An event of ``count`` chunk records built from the real single-put fixture."""
    template = load_event("s3_put_chunk.json")["Records"][0]
    records = []
    for n in range(count):
        record = copy.deepcopy(template)
        record["s3"]["object"]["key"] = f"stream_chunks/chunk-{n:08d}-20261127T040102.100Z.csv"
        record["s3"]["object"]["eTag"] = f"{n:032x}"
        records.append(record)
    return {"Records": records}


class Output:
    """What the handler printed: Powertools log lines and EMF metric documents."""

    def __init__(self, log_text: str, stdout: str):
        self.logs = [json.loads(line) for line in log_text.splitlines() if line.strip()]
        docs = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
        self.metrics: dict[str, float] = {}
        for doc in docs:
            for definition in doc["_aws"]["CloudWatchMetrics"]:
                for metric in definition["Metrics"]:
                    value = doc[metric["Name"]]
                    self.metrics[metric["Name"]] = sum(value) if isinstance(value, list) else value


@pytest.fixture
def trigger(aws: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """Run the handler against a moto queue; returns a function taking the event."""
    sqs = boto3.client("sqs", region_name="us-east-1")
    state: dict[str, Any] = {"queue_url": sqs.create_queue(QueueName="chunks")["QueueUrl"]}

    def configure(queue_url: str) -> None:
        state["queue_url"] = queue_url
        monkeypatch.setenv("QUEUE_URL", queue_url)
        app.settings.cache_clear()

    cached = (app.settings, app.sqs_client)  # tests may replace app.sqs_client
    monkeypatch.setenv("BUCKET", BUCKET)
    monkeypatch.setenv("ENQUEUE_BASE_DELAY_SECONDS", "0.001")
    configure(state["queue_url"])
    app.sqs_client.cache_clear()
    log = io.StringIO()
    handler_stream = app.logger.registered_handler.setStream(log)

    class Trigger:
        client = sqs

        @staticmethod
        def use_queue(queue_url: str) -> None:
            configure(queue_url)

        @staticmethod
        def __call__(event: dict) -> tuple[Any, Output]:
            log.seek(0)
            log.truncate()
            capsys.readouterr()
            try:
                result = app.handler(event, FakeLambdaContext())
            except Exception as exc:  # returned so that tests can also read the output
                result = exc
            return result, Output(log.getvalue(), capsys.readouterr().out)

        @staticmethod
        def received() -> list[ChunkMessage]:
            messages = []
            while True:
                got = sqs.receive_message(QueueUrl=state["queue_url"], MaxNumberOfMessages=10)
                if not got.get("Messages"):
                    return messages
                messages += [ChunkMessage.from_json(m["Body"]) for m in got["Messages"]]

    yield Trigger()
    app.logger.registered_handler.setStream(handler_stream)
    for function in cached:
        function.cache_clear()


def test_single_put_enqueues_one_chunk_message(trigger):
    result, out = trigger(load_event("s3_put_chunk.json"))
    assert result == {"enqueued": 1, "skipped": 0}
    [message] = trigger.received()
    assert message.key == "stream_chunks/chunk-00000001-20261127T040102.100Z.csv"
    assert (message.size, message.etag) == (812345, "9b2cf535f27731c974343645a3985328")
    assert out.metrics == {"ChunksEnqueued": 1}
    [line] = out.logs
    assert line["message"] == "chunk enqueued" and line["key"] == message.key
    assert line["bucket"] == BUCKET
    assert line["function_request_id"] == FakeLambdaContext.aws_request_id


def test_mixed_event_enqueues_only_chunks_with_decoded_keys(trigger):
    result, out = trigger(load_event("s3_mixed_records.json"))
    assert result == {"enqueued": 5, "skipped": 7}
    assert sorted(m.key for m in trigger.received()) == sorted([
        "stream_chunks/chunk-00000002-20261127T040103.100Z.csv",
        "stream_chunks/chunk-00000006-20261127T040106.100Z.csv",  # empty: the worker rejects it
        "stream_chunks/late arrival 03.csv",
        "stream_chunks/chunk+plus-04.csv",
        "stream_chunks/día-05-€-日本.csv",
    ])
    assert out.metrics == {"ChunksEnqueued": 5, "RecordsSkipped": 7}
    # One line per record, each naming its key.
    assert len(out.logs) == 12 and all(line["key"] for line in out.logs)
    skipped = {ln["key"]: ln["reason"] for ln in out.logs if ln["message"] == "skipped record"}
    assert skipped["detected_patterns/detections-00000001.csv"] == "outside_chunk_prefix"
    assert skipped["stream_chunks/"] == "folder"
    assert "stream_chunks/chunk-00000006-20261127T040106.100Z.csv" not in skipped


def test_s3_test_event_is_skipped_not_an_error(trigger):
    result, out = trigger(load_event("s3_test_event.json"))
    assert result == {"enqueued": 0, "skipped": 1}
    assert trigger.received() == []
    assert out.metrics == {"RecordsSkipped": 1}
    assert out.logs[0]["reason"] == "test_event"


class CountingSqs:
    """The real (moto) client, recording each SendMessageBatch call's size."""

    def __init__(self, real: Any):
        self.real, self.batch_sizes = real, []

    def send_message_batch(self, **kwargs: Any) -> dict:
        self.batch_sizes.append(len(kwargs["Entries"]))
        return self.real.send_message_batch(**kwargs)


def test_25_records_are_sent_in_three_batches(trigger, monkeypatch):
    counting = CountingSqs(trigger.client)
    monkeypatch.setattr(app, "sqs_client", lambda: counting)
    result, out = trigger(chunk_event(25))
    assert result == {"enqueued": 25, "skipped": 0}
    assert counting.batch_sizes == [10, 10, 5]
    assert len({m.key for m in trigger.received()}) == 25
    assert out.metrics == {"ChunksEnqueued": 25}


class RefusingSqs:
    """The real client, except that entries for ``refused`` keys are reported as failed."""

    def __init__(self, real: Any, refused: set[str]):
        self.real, self.refused, self.calls = real, refused, 0

    def send_message_batch(self, QueueUrl: str, Entries: list[dict]) -> dict:
        self.calls += 1
        refused = [e for e in Entries if json.loads(e["MessageBody"])["key"] in self.refused]
        passed = [e for e in Entries if e not in refused]
        response = {"Successful": [], "Failed": []}
        if passed:
            response = self.real.send_message_batch(QueueUrl=QueueUrl, Entries=passed)
        failed = [{"Id": e["Id"], "SenderFault": False, "Code": "ServiceUnavailable",
                   "Message": "throttled"} for e in refused]
        return {"Successful": response.get("Successful", []),
                "Failed": response.get("Failed", []) + failed}


def test_entries_that_keep_failing_are_retried_then_the_handler_raises(trigger, monkeypatch):
    monkeypatch.setenv("ENQUEUE_MAX_ATTEMPTS", "3")
    bad = "stream_chunks/chunk-00000001-20261127T040102.100Z.csv"
    refusing = RefusingSqs(trigger.client, {bad})
    monkeypatch.setattr(app, "sqs_client", lambda: refusing)
    app.settings.cache_clear()

    result, out = trigger(chunk_event(3))

    assert isinstance(result, EnqueueFailed)
    assert [f.message.key for f in result.failed] == [bad]
    assert refusing.calls == 3  # the first try and two retries of the failed entry
    assert bad not in {m.key for m in trigger.received()}
    assert out.metrics == {"ChunksEnqueued": 2, "EnqueueFailures": 1}
    errors = [line for line in out.logs if line["level"] == "ERROR"]
    assert [(e["key"], e["error_code"]) for e in errors] == [(bad, "ServiceUnavailable")]


def test_fifo_queue_gets_group_and_deduplication_ids(trigger):
    fifo_url = trigger.client.create_queue(
        QueueName="chunks.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    trigger.use_queue(fifo_url)
    event = chunk_event(2)
    duplicate = copy.deepcopy(event["Records"][0])  # S3 delivered the same event twice
    event["Records"].append(duplicate)

    result, _ = trigger(event)

    assert result == {"enqueued": 3, "skipped": 0}
    got = trigger.client.receive_message(
        QueueUrl=fifo_url, MaxNumberOfMessages=10, AttributeNames=["All"])["Messages"]
    assert len(got) == 2  # SQS dropped the duplicate by its deduplication id
    assert len({m["Attributes"]["MessageGroupId"] for m in got}) == 2


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
def test_missing_queue_url_fails_naming_the_variable(trigger, monkeypatch):
    monkeypatch.delenv("QUEUE_URL")
    app.settings.cache_clear()
    result, _ = trigger(load_event("s3_put_chunk.json"))
    assert "QUEUE_URL" in str(result)


def test_built_package_is_the_trigger_and_the_contract_and_imports_nothing_from_the_worker(
        tmp_path):
    """`sam build` runs `make build-TriggerFunction`; import the handler from its output."""
    subprocess.run(["make", "-s", "build-TriggerFunction", f"ARTIFACTS_DIR={tmp_path}"],
                   cwd=REPO_ROOT, check=True, capture_output=True, timeout=60)
    shipped = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert shipped == [
        *(f"chunk_contract/{name}.py"
          for name in ("__init__", "layout", "listing", "message", "settings", "sqs_batch")),
        *(f"lambda_trigger/{name}.py" for name in ("__init__", "app", "config", "records")),
    ]
    code = (
        "import sys, lambda_trigger.app\n"
        "ours = sorted(m.__file__ for n, m in sys.modules.items() if n.split('.')[0] in "
        "('lambda_trigger', 'chunk_contract'))\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pyspark', 'spark_detector', 'py4j', 'psycopg2', 'producer'))\n"
        "print(ours)\n"
        "print(heavy)\n"
    )
    # Run from the package folder so that its copies are the ones imported: a module missing
    # from the package would be found in the repository instead, and named below.
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PATH": ""},
                          capture_output=True, text=True, check=True, timeout=60)
    ours, heavy = (ast.literal_eval(line) for line in done.stdout.splitlines())
    assert all(f.startswith(f"{tmp_path}/") for f in ours), ours
    assert {str(Path(f).relative_to(tmp_path)) for f in ours} >= {
        "lambda_trigger/app.py", "chunk_contract/message.py", "chunk_contract/sqs_batch.py"}
    assert heavy == []
