"""SendMessageBatch entries, FIFO ids and the bounded retry, against an in-memory fake client."""

from __future__ import annotations

import json

import pytest

from chunk_contract.message import ChunkMessage
from chunk_contract.sqs_batch import (
    EnqueueFailed,
    RetryPolicy,
    batch_entries,
    enqueue,
    fifo_ids,
    send_batch,
)


def message(n: int, etag: str = "e") -> ChunkMessage:
    return ChunkMessage(bucket="b", key=f"stream_chunks/chunk-{n:08d}.csv", size=10, etag=etag)


class FlakySqs:
    """Accepts entries except those whose Id is in ``failing``, each for ``times`` attempts."""

    def __init__(self, failing: dict[str, int], sender_fault: bool = False):
        self.failing = dict(failing)
        self.sender_fault = sender_fault
        self.calls: list[list[str]] = []
        self.accepted: list[str] = []

    def send_message_batch(self, QueueUrl: str, Entries: list[dict]) -> dict:
        self.calls.append([e["Id"] for e in Entries])
        failed, ok = [], []
        for entry in Entries:
            if self.failing.get(entry["Id"], 0) > 0:
                self.failing[entry["Id"]] -= 1
                failed.append({"Id": entry["Id"], "Code": "InternalError",
                               "Message": "try again", "SenderFault": self.sender_fault})
            else:
                ok.append({"Id": entry["Id"], "MessageId": "m" + entry["Id"]})
                self.accepted.append(entry["MessageBody"])
        return {"Successful": ok, "Failed": failed}


def test_standard_entries_carry_the_message_body_only():
    entries = batch_entries([message(1), message(2)], fifo=False)
    assert [e["Id"] for e in entries] == ["0", "1"]
    assert set(entries[0]) == {"Id", "MessageBody"}
    assert json.loads(entries[1]["MessageBody"])["key"] == "stream_chunks/chunk-00000002.csv"


def test_fifo_ids_group_by_object_and_deduplicate_by_version():
    group_a, dedup_a = fifo_ids(message(1, etag="v1"))
    group_b, dedup_b = fifo_ids(message(1, etag="v2"))
    assert group_a == group_b and dedup_a != dedup_b
    assert fifo_ids(message(2))[0] != group_a
    assert len(group_a) <= 128 and group_a.isalnum()
    entry = batch_entries([message(1, etag="v1")], fifo=True)[0]
    assert (entry["MessageGroupId"], entry["MessageDeduplicationId"]) == (group_a, dedup_a)


def test_backoff_is_exponential_and_capped():
    policy = RetryPolicy(max_attempts=6, base_delay=0.1, max_delay=0.5)
    assert [policy.delay(n) for n in range(1, 6)] == [0.1, 0.2, 0.4, 0.5, 0.5]


def test_failed_entries_are_retried_until_accepted():
    sqs, slept = FlakySqs({"1": 2}), []
    left = send_batch(sqs, "q", batch_entries([message(0), message(1)], fifo=False),
                      retry=RetryPolicy(max_attempts=4, base_delay=0.1), sleep=slept.append)
    assert left == {}
    assert sqs.calls == [["0", "1"], ["1"], ["1"]]
    assert slept == [0.1, 0.2]


def test_entries_still_failing_after_the_last_attempt_raise_with_their_keys():
    sqs, slept = FlakySqs({"3": 99}), []
    with pytest.raises(EnqueueFailed) as caught:
        enqueue(sqs, "q", [message(n) for n in range(5)], fifo=False,
                retry=RetryPolicy(max_attempts=3, base_delay=0.01), sleep=slept.append)
    assert [f.message.key for f in caught.value.failed] == ["stream_chunks/chunk-00000003.csv"]
    assert len(caught.value.enqueued) == 4 and len(sqs.accepted) == 4
    assert len(sqs.calls) == 3 and len(slept) == 2
    assert "chunk-00000003.csv" in str(caught.value)


def test_sender_faults_are_not_retried():
    sqs = FlakySqs({"0": 1}, sender_fault=True)
    with pytest.raises(EnqueueFailed):
        enqueue(sqs, "q", [message(0)], fifo=False, sleep=lambda _: None)
    assert sqs.calls == [["0"]]


def test_batches_hold_at_most_ten_entries():
    sqs = FlakySqs({})
    enqueue(sqs, "q", [message(n) for n in range(25)], fifo=False)
    assert [len(c) for c in sqs.calls] == [10, 10, 5]
    with pytest.raises(ValueError, match="at most 10"):
        send_batch(sqs, "q", batch_entries([message(n) for n in range(11)], fifo=False))
