"""The bench's arithmetic, on hand-made inputs (no services)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from bench.measure import (
    ChunkRow,
    backlog_figures,
    batch_lines,
    chunk_batch_sizes,
    compare_detections,
    cost_figures,
    edge_ratio,
    edge_windows,
    latency_figures,
    noisy,
    percentile_cont,
    position_ratio,
    spread,
    startup_figures,
    steady_rows_per_s,
)

T0 = datetime(2026, 11, 27, 4, 0, tzinfo=UTC)


def chunk(order: int, *, rows: int = 10_000, put_s: float = 0.0, commit_s: float = 1.0,
          apply_ms: int = 60, spark_ms: int = 500) -> ChunkRow:
    return ChunkRow(f"stream_chunks/chunk-{order:08d}.csv", order, rows,
                    T0 + timedelta(seconds=put_s), T0 + timedelta(seconds=commit_s),
                    apply_ms, spark_ms)


def batch(keys: list[str], received_s: float, **stages: int) -> dict:
    return {"message": "batch done", "chunks": len(keys), "keys": keys,
            "rows_good": 10_000 * len(keys), "rows_rejected": 0,
            "received_at": (T0 + timedelta(seconds=received_s)).isoformat(), **stages}


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [
        ([], 0.9, None),
        ([5.0], 0.9, 5.0),
        ([1.0, 2.0, 2.0, 2.0, 4.0], 0.9, 3.2),  # position 3.6: 2 + 0.6 * (4 - 2)
        ([7.0, 1.0, 5.0, 6.0], 0.1, 2.2),  # unsorted input; position 0.3: 1 + 0.3 * 4
        ([3.0, 3.0, 3.0], 0.1, 3.0),  # ties
        ([1.0, 2.0], 1.0, 2.0),
        ([1.0, 2.0], 0.0, 1.0),
        ([1, 2, 3, 4], 0.5, 2.5),
        ([10, 20], 0.9, 19.0),  # interpolated, where nearest rank would say 20
    ],
)
def test_percentile_cont_interpolates_between_closest_ranks(values, fraction, expected):
    result = percentile_cont(values, fraction)
    assert result == (None if expected is None else pytest.approx(expected))


def test_batch_lines_keeps_only_batches_that_applied_chunks():
    lines = [
        "WARNING: Using incubator modules",
        json.dumps({"message": "worker started"}),
        json.dumps(batch(["a"], 0.0)),
        json.dumps({"message": "batch done", "chunks": 0, "keys": []}),
        '{"truncated',
    ]
    assert [b["keys"] for b in batch_lines(lines)] == [["a"]]


def test_steady_backlog_rate_is_the_median_of_the_batches_after_the_first():
    batches = [batch(["a"] * 3, 0.0, batch_ms=6_000),  # 5,000 rows/s: the cold first batch
               batch(["b"] * 3, 1.0, batch_ms=1_000),  # 30,000
               batch(["c"] * 3, 2.0, batch_ms=1_500),  # 20,000
               batch(["d"] * 1, 3.0, batch_ms=1_000)]  # 10,000
    assert steady_rows_per_s(batches) == 20_000
    assert steady_rows_per_s(batches[:1]) is None


def test_backlog_rate_runs_from_first_receive_to_last_commit():
    chunks = [chunk(1, commit_s=2.0), chunk(2, commit_s=3.0), chunk(3, commit_s=4.0)]
    batches = [batch([chunks[0].chunk_key, chunks[1].chunk_key], 1.0, spark_ms=900,
                     apply_ms=120, batch_ms=1_100, fetch_ms=40),
               batch([chunks[2].chunk_key], 3.0, spark_ms=500, apply_ms=60, batch_ms=700)]
    figures = backlog_figures(batches, chunks)
    assert figures["wall_s"] == 3.0
    assert figures["rows_per_s"] == 10_000
    assert figures["per_batch_rows_per_s"] == [18_182, 14_286]
    assert figures["steady_rows_per_s"] == 14_286
    assert figures["batch_sizes"] == [2, 1]
    assert figures["stage_ms_total"]["spark_ms"] == 1_400
    assert figures["fetch_ms_total_in_tasks"] == 40
    assert figures["outside_batches_ms"] == 3_000 - 1_800


def test_latency_is_event_time_to_commit_in_apply_order():
    chunks = [chunk(2, put_s=1.0, commit_s=3.0), chunk(1, put_s=0.0, commit_s=0.5)]
    figures = latency_figures(chunks)
    assert figures["per_chunk_s"] == [0.5, 2.0]
    assert figures["latency_s"]["max"] == 2.0
    assert figures["latency_s"]["p50"] == 1.25


def test_cost_shares_a_batch_spark_job_among_its_chunks_and_skips_a_partial_last_chunk():
    chunks = [chunk(i, apply_ms=50, spark_ms=400) for i in range(1, 6)]
    chunks.append(chunk(6, apply_ms=80, spark_ms=400))
    chunks.append(chunk(7, rows=5_000, apply_ms=20, spark_ms=200))
    sizes = chunk_batch_sizes([batch([c.chunk_key for c in chunks[:4]], 0.0),
                               batch([c.chunk_key for c in chunks[4:6]], 1.0)])
    figures = cost_figures(chunks, sizes)
    assert figures["total_ms"] == [150.0] * 4 + [250.0, 280.0, 220.0]
    assert figures["last_full_chunk"] == 6
    assert figures["chunk_last_full_vs_5"] == 1.12
    assert figures["apply_chunk_last_full_vs_5"] == 1.6
    assert figures["chunk_last_vs_5"] == 0.88


def test_ratios_use_what_there_is_and_refuse_what_there_is_not():
    assert edge_ratio([1, 1, 1, 3, 3, 3]) == 3.0  # width shrinks to half the values
    assert edge_ratio([5]) is None
    assert position_ratio([2, 4, 6, 8, 10], 5, 1) == 5.0
    assert position_ratio([1, 2], 5, 1) is None


def test_cost_ratio_compares_the_last_ten_with_the_ten_after_warm_up():
    # chunks 1-10 expensive (warm-up), 11-20 cost 100, then flat, the last ten cost 105
    total = [500] * 10 + [100] * 10 + [100] * 270 + [105] * 10
    chunks = [chunk(i, apply_ms=0, spark_ms=ms) for i, ms in enumerate(total, start=1)]
    figures = cost_figures(chunks, {})
    assert (figures["window_first"], figures["window_last"]) == ([11, 20], [291, 300])
    assert figures["total_ratio"] == 1.05
    assert figures["total_ratio_last10_first10"] == 0.21  # the very first ten: warm-up


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (300, ([11, 20], [291, 300])),
        (30, ([11, 20], [21, 30])),
        (25, ([6, 15], [16, 25])),  # the warm-up shrinks first
        (12, ([1, 6], [7, 12])),  # then the width
        (1, (None, None)),
    ],
)
def test_edge_windows_never_overlap(count, expected):
    assert edge_windows(count, width=10, warm_up=10) == expected


def test_startup_runs_from_process_start_to_the_ready_line():
    records = [{"message": "code shipped with addPyFile", "timestamp": "2026-11-27T04:00:03Z"},
               {"message": "spark ready", "timestamp": "2026-11-27T04:00:12.5+00:00",
                "weights_cached": True, "spark_start_ms": 3_100, "start_up_ms": 4_800},
               {"message": "worker started", "timestamp": "2026-11-27T04:00:12.75+00:00"},
               {"message": "worker started", "timestamp": "2026-11-27T04:09:00+00:00"}]
    assert startup_figures(records, T0) == {
        "ready_s": 12.75, "spark_ready_s": 12.5, "warm_s": None, "weights_cached": True,
        "spark_start_ms": 3_100, "start_up_ms": 4_800}
    assert startup_figures(records[:1], T0)["ready_s"] is None


def test_spread_and_noise():
    assert spread([3.0, None, 1.0, 2.0]) == {"n": 3, "median": 2.0, "min": 1.0, "max": 3.0}
    assert spread([None])["median"] is None
    assert noisy([0.4, 1.0, 1.0], [1.6, 1.0, 1.0], threshold=1.5)
    assert noisy([2.0, 1.0, 1.0], None, threshold=1.5)
    assert not noisy([1.5, 3.0, 3.0], [0.2, 3.0, 3.0], threshold=1.5)  # only the 1-minute one


def detection(pattern: str, merchant: str, customer: str | None, chunk_key: str) -> dict:
    return {"pattern_id": pattern, "merchant_id": merchant, "customer_name": customer,
            "chunk_key": chunk_key}


def test_detections_compare_by_key_and_by_the_chunk_file_they_fired_at():
    ours = [detection("PatId1", "M1", "C1", "stream_chunks/chunk-00000007-x.csv"),
            detection("PatId3", "M2", "", "stream_chunks/chunk-00000009-x.csv")]
    peer = [detection("PatId1", "M1", "C1", "/tmp/peer/chunks/chunk-00000007-x.csv"),
            detection("PatId3", "M2", None, "file:///tmp/peer/chunks/chunk-00000009-x.csv")]
    result = compare_detections(ours, peer)
    assert result["exact"] and result["same_key_same_chunk"] == 2


def test_detections_that_differ_are_listed():
    ours = [detection("PatId1", "M1", "C1", "k/chunk-1.csv"),
            detection("PatId2", "M1", "C2", "k/chunk-2.csv"),
            detection("PatId2", "M1", "C3", "k/chunk-3.csv")]
    peer = [detection("PatId1", "M1", "C1", "chunk-1.csv"),
            detection("PatId2", "M1", "C2", "chunk-5.csv"),
            detection("PatId2", "M9", "C9", "chunk-4.csv"),
            detection("PatId2", "M9", "C9", "chunk-6.csv")]  # emitted twice
    result = compare_detections(ours, peer)
    assert not result["exact"]
    assert result["only_ours"] == [{"pattern_id": "PatId2", "merchant_id": "M1",
                                    "customer_name": "C3", "chunk": "chunk-3.csv"}]
    assert result["only_peer"] == [{"pattern_id": "PatId2", "merchant_id": "M9",
                                    "customer_name": "C9", "chunk": "chunk-4.csv"}]
    assert result["fired_elsewhere"] == [{"pattern_id": "PatId2", "merchant_id": "M1",
                                          "customer_name": "C2", "ours_chunk": "chunk-2.csv",
                                          "peer_chunk": "chunk-5.csv"}]
    assert (result["same_key_same_chunk"], result["repeated_peer"]) == (1, 1)
