"""The producer's lease on its stream (producer/lease.py) through the real stream loop, on a
local folder laid out like the bucket: its conditional writes are the folder store's."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from producer.lease import LeaseLost, StreamLeased
from producer.state import ProducerState
from producer.store import LocalStore
from producer.stream import ChunkReport, StreamOptions, run_stream
from tests.support.producers import SETTINGS, TRANSACTIONS, chunk_rows, source_rows

NOW = datetime(2026, 11, 27, 4, 0, tzinfo=UTC)


def crashed_producers_state(store: LocalStore, expires: datetime) -> None:
    """What a producer that was killed after chunk 1 leaves behind: its position and lease."""
    run_stream(SETTINGS, StreamOptions(str(TRANSACTIONS), max_chunks=1), store)
    state = ProducerState.from_json(store.get(SETTINGS.state_key))
    store.put(SETTINGS.state_key, replace(state, lease_owner="host-a:41:0f0f",
                                          lease_expires_at=expires.isoformat()).to_json())


def test_a_lease_that_has_not_expired_is_refused_and_one_that_has_is_taken(tmp_path: Path):
    store = LocalStore(tmp_path)
    crashed_producers_state(store, expires=NOW + timedelta(seconds=60))

    with pytest.raises(StreamLeased, match="host-a:41:0f0f, its lease runs until"):
        run_stream(SETTINGS, StreamOptions(str(TRANSACTIONS)), store, now=lambda: NOW)
    assert len(store.keys("stream_chunks/")) == 1  # nothing written

    later = NOW + timedelta(seconds=61)
    result = run_stream(SETTINGS, StreamOptions(str(TRANSACTIONS)), store, now=lambda: later)
    assert (result.chunks_sent, result.next_row) == (2, 3000)
    assert chunk_rows(store) == source_rows()
    state = json.loads(store.get(SETTINGS.state_key))
    assert (state["lease_owner"], state["lease_expires_at"]) == ("", "")  # let go at the end


def test_take_over_ignores_a_lease_that_has_not_expired(tmp_path: Path):
    store = LocalStore(tmp_path)
    crashed_producers_state(store, expires=NOW + timedelta(hours=1))
    result = run_stream(SETTINGS, StreamOptions(str(TRANSACTIONS), take_over=True), store,
                        now=lambda: NOW)
    assert result.chunks_sent == 2 and chunk_rows(store) == source_rows()


def test_the_lease_runs_a_lease_period_past_the_next_chunks_due_time(tmp_path: Path):
    store = LocalStore(tmp_path)
    seen: list[dict] = []

    def look(report: ChunkReport) -> None:
        seen.append(json.loads(store.get(SETTINGS.state_key)))

    settings = replace(SETTINGS, interval=0.0, lease_seconds=30)
    run_stream(settings, StreamOptions(str(TRANSACTIONS), max_chunks=1), store,
               now=lambda: NOW, report=look)
    assert seen[0]["lease_owner"] and seen[0]["lease_expires_at"] == (
        NOW + timedelta(seconds=30)).isoformat()


def test_a_producer_whose_stream_was_taken_over_stops_at_its_next_state_write(tmp_path: Path):
    store = LocalStore(tmp_path)

    def taken_over(report: ChunkReport) -> None:
        # another producer takes the stream over (as --take-over does) after chunk 1
        state = ProducerState.from_json(store.get(SETTINGS.state_key))
        found = store.get_versioned(SETTINGS.state_key)
        store.put_if(SETTINGS.state_key, replace(state, lease_owner="host-b:7:aaaa",
                                                 lease_expires_at=NOW.isoformat()).to_json(),
                     found[1])

    with pytest.raises(LeaseLost, match="another producer took the stream over"):
        run_stream(SETTINGS, StreamOptions(str(TRANSACTIONS)), store, report=taken_over)
    assert len(store.keys("stream_chunks/")) == 2  # chunk 2 was uploaded, then it stopped
    state = json.loads(store.get(SETTINGS.state_key))
    assert state["lease_owner"] == "host-b:7:aaaa"  # the new owner's lease is left alone
