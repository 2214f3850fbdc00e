"""Producer settings: environment first, CLI flags on top, bad values named."""

from __future__ import annotations

import pytest

from producer.config import InvalidSetting, MissingSetting, ProducerSettings


def test_defaults_follow_the_shared_conventions():
    settings = ProducerSettings.from_env({})
    assert (settings.chunk_prefix, settings.reference_key, settings.state_key) == (
        "stream_chunks/", "reference/CustomerImportance.csv", "_state/producer.json"
    )
    assert (settings.rows_per_chunk, settings.interval) == (10_000, 1.0)


def test_environment_is_read_and_flags_override_it():
    env = {"BUCKET": "b", "CHUNK_PREFIX": "in/", "ROWS_PER_CHUNK": "500",
           "CHUNK_INTERVAL_SECONDS": "0.5"}
    settings = ProducerSettings.from_env(env).override(interval=0.0, rows_per_chunk=None)
    assert (settings.bucket, settings.chunk_prefix, settings.rows_per_chunk, settings.interval) == (
        "b", "in/", 500, 0.0
    )


def test_missing_bucket_names_the_variable():
    with pytest.raises(MissingSetting, match="BUCKET"):
        ProducerSettings.from_env({}).require_bucket()


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"ROWS_PER_CHUNK": "ten"}, "ROWS_PER_CHUNK"),
        ({"ROWS_PER_CHUNK": "0"}, r"ROWS_PER_CHUNK=0 is out of range: allowed \[1, inf\)"),
        ({"CHUNK_INTERVAL_SECONDS": "-1"}, r"CHUNK_INTERVAL_SECONDS=-1.0 is out of range"),
        ({"PRODUCER_LEASE_SECONDS": "0"},
         r"PRODUCER_LEASE_SECONDS=0.0 is out of range: allowed \[1, 86400\]"),
    ],
)
def test_bad_values_are_refused_with_a_reason(env, match):
    with pytest.raises(InvalidSetting, match=match):
        ProducerSettings.from_env(env)
