"""The chunk key format (chunk_contract.layout): which keys carry a producer sequence number."""

from datetime import UTC, datetime

import pytest

from chunk_contract.layout import chunk_key, chunk_seq, seq_key_prefix, start_after_seq

P = "stream_chunks/"
WHEN = datetime(2026, 11, 27, 4, 1, 2, 100_000, tzinfo=UTC)


def test_the_producers_key_carries_its_number():
    key = chunk_key(P, 42, WHEN)
    assert key == "stream_chunks/chunk-00000042-20261127T040102.100Z.csv"
    assert chunk_seq(key, P) == 42


@pytest.mark.parametrize("key", [
    "stream_chunks/backup/chunk-00000005-20261127T040102.100Z.csv",  # not directly under
    "stream_chunks/my-chunk-00000005-20261127T040102.100Z.csv",  # only contains the format
    "other/chunk-00000005-20261127T040102.100Z.csv",  # under another prefix
    "stream_chunks/chunk-0000000\u0665-20261127T040102.100Z.csv",  # a digit of another script
    "stream_chunks/chunk-00000005-2026112\u0667T040102.100Z.csv",
    "stream_chunks/chunk-00000000-20261127T040102.100Z.csv",  # seq 0
    "stream_chunks/chunk-00000005-20261399T040102.100Z.csv",  # no such day
    "stream_chunks/chunk-00000005-20261127T040102.100Z.csv.bak",
    "stream_chunks/chunk-00000005.csv",
    "stream_chunks/chunk-000000005-20261127T040102.100Z.csv",
])
def test_any_other_key_is_a_hand_upload_without_a_number(key):
    assert chunk_seq(key, P) is None


def test_the_prefix_anchors_the_format():
    key = "p/q/chunk-00000005-20261127T040102.100Z.csv"
    assert chunk_seq(key, "p/q/") == 5
    assert chunk_seq(key, "p/") is None
    assert chunk_seq(key.removeprefix("p/q/"), "") == 5


def test_a_listing_from_a_number_starts_after_its_predecessors_keys():
    start = start_after_seq(P, 12)
    assert chunk_key(P, 11, WHEN) < start < chunk_key(P, 12, WHEN.replace(year=2000))
    assert start_after_seq("p/", 1) < "p/chunk-00000001-"
    assert chunk_key(P, 7, WHEN).startswith(P + seq_key_prefix(7))
