"""The arithmetic and the data of benchmarks (a), (b) and (c) (bench.state_size, bench.growing),
with hand-made inputs: no service, no timing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench import growing, state_size
from bench.measure import ChunkRow

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_measured_chunks_have_the_same_shape_at_every_size():
    for size in (5_000, 50_000):
        shape = state_size.Shape(size, chunks=3, build_pairs=100, seed=1)
        for chunk in state_size.measured_chunks(shape):
            large = [p for p in chunk.pairs if p.merchant in state_size.LARGE]
            assert len(chunk.pairs) == state_size.CHUNK_PAIRS
            assert chunk.rows_good == state_size.CHUNK_ROWS
            assert len(large) == state_size.CHUNK_PAIRS // 2
            new = [p for p in large if int(p.customer[1:]) >= size]
            assert 0.05 < len(new) / len(large) < 0.15
            assert list(chunk.pairs) == sorted(chunk.pairs, key=lambda p: (p.merchant, p.customer))


def test_the_built_state_has_every_customer_on_both_large_merchants():
    shape = state_size.Shape(120, chunks=1, build_pairs=100, seed=2)
    chunks = list(state_size.build_chunks(shape))
    assert len(chunks) == 3  # 50 customers per chunk on each of the two merchants
    pairs = {(p.merchant, p.customer) for c in chunks for p in c.pairs}
    for merchant in state_size.LARGE:
        assert {c for m, c in pairs if m == merchant} == {f"C{n:010d}" for n in range(120)}
    counts = [p.txn_count for c in chunks for p in c.pairs if p.merchant in state_size.LARGE]
    assert min(counts) >= 1 and 10 < sum(counts) / len(counts) < 20


def test_the_ratio_is_the_largest_sizes_median_over_the_smallest():
    sizes = [{"apply_ms": {"median": 80.0}}, {"apply_ms": {"median": 90.0}},
             {"apply_ms": {"median": 100.0}}]
    assert state_size.ratio(sizes) == 1.25
    assert state_size.ratio(sizes[:1]) is None


def chunk(order: int, latency_s: float, apply_ms: int = 50, spark_ms: int = 100) -> ChunkRow:
    applied = T0 + timedelta(seconds=order)
    return ChunkRow(f"c{order}", order, 10_000, applied - timedelta(seconds=latency_s), applied,
                    apply_ms, spark_ms)


def test_window_figures_take_latency_cost_and_the_samples_of_each_window():
    chunks = [chunk(n, 0.2 if n < 4 else 0.9, apply_ms=40 + n) for n in range(1, 7)]
    samples = [{"t": (T0 + timedelta(seconds=s)).timestamp(), "queue": q, "worker_bytes": 10 * s,
                "postgres_bytes": 5, "pairs": 100 * s, "load": [0.5, 0.4, 0.3]}
               for s, q in ((1, 0), (2, 1), (3, 0), (5, 4), (6, 1))]
    first, second = growing.window_figures(chunks, samples, window=3)
    assert first["chunks"] == [1, 3] and second["chunks"] == [4, 6]
    assert first["latency_p99_s"] < 0.21 and second["latency_p50_s"] == 0.9
    assert first["apply_ms_median"] == 42 and first["cost_ms_median"] == 142
    assert first["queue_max"] == 1 and second["queue_max"] == 4
    assert second["pairs"] == 600 and second["worker_bytes_max"] == 60
    assert second["load_1m"] == 0.5


def test_nominal_targets_compare_whole_windows_after_the_warm_up():
    windows = [
        {"chunks": [1, 10], "latency_p99_s": 3.0, "queue_max": 9, "cost_ms_median": 500},
        {"chunks": [11, 20], "latency_p99_s": 0.5, "queue_max": 1, "cost_ms_median": 200},
        {"chunks": [21, 30], "latency_p99_s": 0.6, "queue_max": 2, "cost_ms_median": 230},
    ]
    targets = growing.nominal_targets(windows, warm_up=5, window=10)
    assert targets["cost_windows"] == [[11, 20], [21, 30]] and targets["cost_ratio"] == 1.15
    assert targets["cost_met"] and not targets["p99_met"] and not targets["queue_met"]
    later = growing.nominal_targets(windows[1:], warm_up=5, window=10)
    assert later["p99_met"] and later["queue_met"] and later["p99_max_s"] == 0.6


def test_the_data_set_reaches_the_customers_by_the_end_of_the_nominal_phase():
    config = growing.Config(
        minutes=30, interval_s=1.0, rows_per_chunk=10_000, customers=2_000_000,
        backlog_chunks=300, window=100, warm_up=20, seed=0, shared_buffers="2GB",
        out=Path("out"), work_dir=Path("work"), data_root=Path("data"))
    assert config.nominal_chunks == 1_800
    assert config.file_rows == 2_100 * 10_000
    # customers arrive evenly over the file: 1,800 of its 2,100 chunks hold 2,000,000 of them
    assert config.file_customers * 1_800 // 2_100 >= 2_000_000


def test_the_drain_cpu_per_chunk_and_the_rates_it_allows():
    before = {"t": 100.0, "machine": 50.0, "worker": 20.0, "postgres": 10.0,
              "postgres_processes": {1: 1.0, 7: 9.0}}
    after = {"t": 130.0, "machine": 110.0, "worker": 50.0, "postgres": 38.0,
             "postgres_processes": {1: 2.0, 7: 34.0, 9: 1.0}}  # 9 started meanwhile
    cpu = growing.cpu_figures(before, after, chunks=200, rows_per_chunk=10_000, cores=2)
    assert cpu["wall_s"] == 30.0 and cpu["busy_cores"] == 2.0
    assert cpu["cpu_ms_per_chunk"] == {"machine": 300.0, "worker": 150.0, "postgres": 140.0,
                                       "applying_backend": 125.0}
    # 2 cores / 300 ms a chunk; one backend at 125 ms a chunk
    assert cpu["bound_by_cores_rows_per_s"] == 66_667
    assert cpu["bound_by_backend_rows_per_s"] == 80_000


def test_a_cpu_snapshot_reads_this_process_tree():
    import os

    snapshot = growing.cpu_snapshot(os.getpid(), pgdata=None)
    assert snapshot["machine"] > 0 and snapshot["worker"] > 0 and snapshot["postgres"] is None


def test_latency_runs_to_the_commit_logged_after_it():
    late = chunk(1, 0.2)
    records = [{"message": "chunk applied", "chunk_key": "c1",
                "timestamp": (late.applied_at + timedelta(milliseconds=150)).isoformat()},
               {"message": "batch done", "chunks": 1}]
    committed = growing.committed_at(records)
    assert committed == {"c1": late.applied_at + timedelta(milliseconds=150)}
    assert abs(growing.latency_s(late, committed) - 0.35) < 1e-9
    # a chunk without a log line (another worker applied it): applied_at
    assert abs(growing.latency_s(chunk(2, 0.2), committed) - 0.2) < 1e-9
    (figures,) = growing.window_figures([late], [], window=10, committed=committed)
    assert figures["latency_p99_s"] == 0.35


def test_the_apply_profile_folds_statements_and_ranks_them_per_window():
    from bench import apply_profile

    assert apply_profile.statement_label("WITH upserted AS (\n    INSERT  INTO x") == (
        "WITH upserted AS ( INSERT INTO x")
    lines = apply_profile.window_lines(
        101, [0.1, 0.3, 0.2], [{"a": 0.03, "b": 0.01}, {"a": 0.06}, {"a": 0.03, "b": 0.02}],
        pairs=1_234_567, sizes={"pair_state": 170_000_000, "pair_state_pkey": 60_000_000})
    assert lines[0] == ("chunks 101-103: apply median 200.0 ms (with its commit), state"
                        " 1,234,567 pairs, pair_state 170 MB, pair_state_pkey 60 MB")
    assert lines[1].split() == ["40.00", "ms", "a"] and lines[2].split() == ["10.00", "ms", "b"]


def test_the_apply_profile_cuts_chunks_as_the_producer_does(tmp_path):
    from bench import apply_profile

    header = b"step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud\n"
    path = tmp_path / "t.csv"
    path.write_bytes(header + b"".join(b"%d\n" % i for i in range(25_000)))
    chunks = list(apply_profile.chunk_texts(path))
    assert [c.count(b"\n") for c in chunks] == [10_001, 10_001, 5_001]
    assert all(c.startswith(header) for c in chunks) and chunks[1].split(b"\n")[1] == b"10000"
