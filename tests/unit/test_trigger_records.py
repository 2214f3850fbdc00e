"""Pure per-record logic of the trigger: what is a chunk, and the message it becomes."""

from __future__ import annotations

import json

import pytest
from aws_lambda_powertools.utilities.data_classes import S3Event

from chunk_contract.message import ChunkMessage
from lambda_trigger.config import MissingSetting, TriggerSettings
from lambda_trigger.records import chunk_message, object_key, skip_reason
from tests.conftest import EVENTS

SETTINGS = TriggerSettings(bucket="txn-pipeline-data", queue_url="https://sqs/q")


def records(name: str) -> list:
    return list(S3Event(json.loads((EVENTS / name).read_text(encoding="utf-8"))).records)


def test_keys_are_decoded_exactly_as_s3_encodes_them():
    keys = [object_key(r) for r in records("s3_mixed_records.json")[:4]]
    assert keys == [
        "stream_chunks/chunk-00000002-20261127T040103.100Z.csv",
        "stream_chunks/late arrival 03.csv",
        "stream_chunks/chunk+plus-04.csv",
        "stream_chunks/día-05-€-日本.csv",
    ]


def test_each_kind_of_record_gets_its_reason():
    reasons = [skip_reason(r, SETTINGS) for r in records("s3_mixed_records.json")]
    assert reasons == [
        None, None, None, None,
        "outside_chunk_prefix",  # detected_patterns/
        "outside_chunk_prefix",  # quarantine/
        "outside_chunk_prefix",  # reference/
        "outside_chunk_prefix",  # _state/
        "folder",
        None,  # an empty chunk: the worker rejects and records it
        "not_chunk_suffix",
        "not_object_created",
    ]


def test_records_of_another_bucket_are_skipped():
    other = TriggerSettings(bucket="someone-else", queue_url="https://sqs/q")
    assert skip_reason(records("s3_put_chunk.json")[0], other) == "other_bucket"


def test_prefix_and_suffix_come_from_settings():
    custom = TriggerSettings(bucket="txn-pipeline-data", queue_url="q",
                             chunk_prefix="quarantine/", chunk_suffix=".csv")
    reasons = [skip_reason(r, custom) for r in records("s3_mixed_records.json")]
    assert reasons.count(None) == 1 and reasons[5] is None


def test_chunk_message_carries_the_object_identity():
    message = chunk_message(records("s3_put_chunk.json")[0])
    assert message == ChunkMessage(
        bucket="txn-pipeline-data",
        key="stream_chunks/chunk-00000001-20261127T040102.100Z.csv",
        size=812345,
        etag="9b2cf535f27731c974343645a3985328",
        sequencer="0055AED6DCD90281E5",
        event_time="2026-11-27T04:01:02.123Z",
    )
    assert ChunkMessage.from_json(message.to_json()) == message


def test_settings_defaults_and_fifo_detection():
    s = TriggerSettings.from_env({"BUCKET": "b", "QUEUE_URL": "https://q/chunks.fifo"})
    assert (s.chunk_prefix, s.chunk_suffix, s.fifo) == ("stream_chunks/", ".csv", True)
    assert not TriggerSettings.from_env({"BUCKET": "b", "QUEUE_URL": "https://q/chunks"}).fifo


@pytest.mark.parametrize("missing", ["BUCKET", "QUEUE_URL"])
def test_missing_setting_names_the_variable(missing):
    env = {"BUCKET": "b", "QUEUE_URL": "q"}
    env[missing] = ""
    with pytest.raises(MissingSetting, match=missing):
        TriggerSettings.from_env(env)


def test_retry_settings_are_validated():
    from lambda_trigger.config import InvalidSetting

    env = {"BUCKET": "b", "QUEUE_URL": "q", "ENQUEUE_MAX_ATTEMPTS": "2",
           "ENQUEUE_BASE_DELAY_SECONDS": "0.05"}
    s = TriggerSettings.from_env(env)
    assert (s.enqueue_max_attempts, s.enqueue_base_delay) == (2, 0.05)
    with pytest.raises(InvalidSetting, match="ENQUEUE_MAX_ATTEMPTS"):
        TriggerSettings.from_env({**env, "ENQUEUE_MAX_ATTEMPTS": "0"})
    with pytest.raises(InvalidSetting, match="ENQUEUE_BASE_DELAY_SECONDS"):
        TriggerSettings.from_env({**env, "ENQUEUE_BASE_DELAY_SECONDS": "soon"})
