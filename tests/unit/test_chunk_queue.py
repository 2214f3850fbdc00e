import json

import boto3
import pytest

from chunk_contract.message import ChunkMessage
from spark_detector.worker.chunk_queue import (
    InFlight,
    Received,
    change_visibility,
    delete_messages,
    plan_batch,
    receive_batch,
)


def received(body: str, n: int = 0) -> Received:
    return Received(message_id=f"m{n}", receipt_handle=f"r{n}", body=body)


def body(key: str) -> str:
    return ChunkMessage(bucket="b", key=key, size=10).to_json()


def test_plan_orders_chunks_by_key_and_groups_duplicate_deliveries():
    plan = plan_batch([
        received(body("stream_chunks/chunk-00000002.csv"), 1),
        received(body("stream_chunks/chunk-00000001.csv"), 2),
        received(body("stream_chunks/chunk-00000002.csv"), 3),
    ], bucket="b")
    assert plan.keys == ["stream_chunks/chunk-00000001.csv", "stream_chunks/chunk-00000002.csv"]
    assert [r.message_id for r in plan.receipts["stream_chunks/chunk-00000002.csv"]] == ["m1", "m3"]
    assert plan.poison == []


@pytest.mark.parametrize("raw, reason", [
    ("not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    (json.dumps({"version": 99, "bucket": "b", "key": "k", "size": 1}), "unsupported"),
    (json.dumps({"version": 1, "bucket": "b", "size": 1}), "missing or bad field"),
    (ChunkMessage(bucket="other", key="k", size=1).to_json(), "this worker serves 'b'"),
])
def test_garbage_bodies_are_poison_with_a_reason(raw, reason):
    plan = plan_batch([received(raw)], bucket="b")
    assert plan.keys == []
    assert len(plan.poison) == 1 and reason in plan.poison[0].reason


@pytest.fixture
def queue(aws):
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="chunks")["QueueUrl"]
    return sqs, url


def test_receive_tops_up_a_backlog_to_the_batch_size(queue):
    sqs, url = queue
    for i in range(25):
        sqs.send_message(QueueUrl=url, MessageBody=body(f"stream_chunks/c{i:02d}.csv"))
    got = receive_batch(sqs, url, max_messages=20, wait_time_seconds=0, window_seconds=5)
    assert len(got) == 20
    assert all(m.receive_count == 1 for m in got)


def test_receive_hands_over_a_single_message_at_once(queue):
    sqs, url = queue
    sqs.send_message(QueueUrl=url, MessageBody=body("stream_chunks/c.csv"))
    got = receive_batch(sqs, url, max_messages=10, wait_time_seconds=0, window_seconds=60)
    assert [ChunkMessage.from_json(m.body).key for m in got] == ["stream_chunks/c.csv"]


def test_deleted_messages_are_gone_and_postponed_ones_are_hidden(queue):
    sqs, url = queue
    for i in range(12):
        sqs.send_message(QueueUrl=url, MessageBody=body(f"stream_chunks/c{i:02d}.csv"))
    got = receive_batch(sqs, url, max_messages=12, wait_time_seconds=0, window_seconds=5)
    delete_messages(sqs, url, got[:11])
    change_visibility(sqs, url, got[11:], 600)
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attrs["ApproximateNumberOfMessages"] == "0"
    assert attrs["ApproximateNumberOfMessagesNotVisible"] == "1"


def test_inflight_deletes_several_chunks_messages_at_once_and_stops_holding_them(queue):
    sqs, url = queue
    for i in range(13):  # two deliveries of chunk 0: both deleted with it
        sqs.send_message(QueueUrl=url, MessageBody=body(f"stream_chunks/c{i % 12:02d}.csv"))
    got = receive_batch(sqs, url, max_messages=13, wait_time_seconds=0, window_seconds=5)
    held = InFlight(sqs, url, every_seconds=60, extend_to_seconds=60)
    for message in got:
        held.add(ChunkMessage.from_json(message.body).key, [message])
    done = [f"stream_chunks/c{i:02d}.csv" for i in range(11)]

    held.delete_many(done)

    assert held.keys() == ["stream_chunks/c11.csv"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert (attrs["ApproximateNumberOfMessages"],
            attrs["ApproximateNumberOfMessagesNotVisible"]) == ("0", "1")
