"""The pure parts of the Structured Streaming peer (bench.peer_streaming, bench.peer_compare):
the summary arithmetic, the atomic file feeder and the detection diff."""

from __future__ import annotations

import threading
import time

from bench.peer_compare import diff_detections, peer_batches
from bench.peer_streaming import batch_chunk_key, feed_files, summarize, utc_iso

T0 = 1_800_000_000.0


def chunk(name: str, batch_id: int, mtime: float, committed: float, rows: int = 10,
          started: float | None = None) -> dict:
    return {"chunk_key": name, "batch_id": batch_id, "rows": rows,
            "file_mtime": utc_iso(mtime), "committed_at": utc_iso(committed),
            "batch_started_at": utc_iso(started if started is not None else committed - 0.5)}


def test_a_batch_fires_at_its_last_file_by_name():
    assert batch_chunk_key(["chunk-00000003-x.csv", "chunk-00000001-y.csv"]) == (
        "chunk-00000003-x.csv")


def test_summary_latency_is_commit_minus_file_time_and_rows_per_s_runs_from_the_first_trigger():
    chunks = [chunk("a.csv", 0, T0, T0 + 1.0, rows=100),
              chunk("b.csv", 1, T0 + 1, T0 + 1.5, rows=100),
              chunk("c.csv", 1, T0 + 1, T0 + 3.0, rows=200)]
    detections = [{"pattern_id": "PatId2"}, {"pattern_id": "PatId2"}, {"pattern_id": "PatId3"}]
    summary = summarize(chunks, detections, startup_s=12.3456, first_trigger_at=T0 - 1.0,
                        timed_out=False, max_files_per_trigger=1)
    assert summary["chunks"] == 3 and summary["rows"] == 400 and summary["batches"] == 2
    assert summary["run_s"] == 4.0 and summary["rows_per_s"] == 100
    assert summary["latency_s"] == {"p50": 1.0, "p90": 1.8, "p99": 1.98, "max": 2.0}
    assert summary["startup_s"] == 12.346
    assert summary["batch_stages_ms_p50"] == {}  # no stage timings in these records
    assert summary["detections_per_pattern"] == {"PatId1": 0, "PatId2": 2, "PatId3": 1}
    assert summary["max_files_per_trigger"] == 1 and summary["timed_out"] is False


def test_summary_without_a_trigger_time_starts_at_the_first_foreach_batch():
    chunks = [chunk("a.csv", 0, T0, T0 + 2.0, started=T0 + 1.0, rows=50)]
    summary = summarize(chunks, [], startup_s=None, first_trigger_at=None, timed_out=True)
    assert summary["rows_per_s"] == 50 and summary["timed_out"] is True


def test_stage_medians_count_each_micro_batch_once():
    stages = [{"batch_ms": 100, "spark_ms": 80, "db_ms": 20},
              {"batch_ms": 300, "spark_ms": 200, "db_ms": 100}]
    chunks = [{**chunk("a.csv", 0, T0, T0 + 1), **stages[0]},
              {**chunk("b.csv", 1, T0, T0 + 2), **stages[1]},
              {**chunk("c.csv", 1, T0, T0 + 2), **stages[1]},
              {**chunk("d.csv", 1, T0, T0 + 2), **stages[1]}]
    summary = summarize(chunks, [], startup_s=None, first_trigger_at=None, timed_out=False)
    assert summary["batch_stages_ms_p50"] == {"batch_ms": 200, "spark_ms": 140, "db_ms": 60}


def test_summary_of_nothing_processed():
    summary = summarize([], [], startup_s=1.0, first_trigger_at=None, timed_out=True)
    assert summary["chunks"] == 0 and summary["rows_per_s"] is None
    assert summary["latency_s"]["p50"] is None


def test_feed_files_copies_in_order_on_a_schedule_and_leaves_no_temp_file(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    paths = []
    for n in range(3):
        path = src / f"chunk-{n}.csv"
        path.write_bytes(b"header\n" + b"row\n" * (n + 1))
        paths.append(path)
    started = time.monotonic()
    fed = feed_files(paths, tmp_path / "watched", interval_s=0.05)
    assert time.monotonic() - started >= 0.1
    assert [f["chunk_key"] for f in fed] == ["chunk-0.csv", "chunk-1.csv", "chunk-2.csv"]
    watched = sorted(p.name for p in (tmp_path / "watched").iterdir())
    assert watched == ["chunk-0.csv", "chunk-1.csv", "chunk-2.csv"]  # no .part left
    assert all((tmp_path / "watched" / p.name).read_bytes() == p.read_bytes() for p in paths)


class StopOnceWaiting(threading.Event):
    """A stop asked for at the moment the feeder starts waiting for its next slot: no timer
    racing the first copy."""

    def wait(self, timeout: float | None = None) -> bool:
        self.set()
        return super().wait(timeout)


def test_feed_files_stops_when_asked(tmp_path):
    src = tmp_path / "a.csv"
    src.write_text("h\n")
    fed = feed_files([src, src, src], tmp_path / "out", interval_s=10, stop=StopOnceWaiting())
    assert len(fed) == 1


K1, K2, K3 = ("PatId2", "M1", "C1"), ("PatId2", "M1", "C2"), ("PatId3", "M1", "")


def test_diff_names_what_is_missing_extra_and_fired_at_another_chunk():
    diff = diff_detections([(K1, "c2"), (K2, "c3")], [(K1, "c1"), (K3, "c1")])
    assert diff["exact"] is False
    assert diff["same_key"] == 1 and diff["same_key_and_chunk"] == 0
    assert diff["only_peer"] == [[*K2, "c3"]]
    assert diff["only_expected"] == [[*K3, "c1"]]
    assert diff["other_chunk"] == [[*K1, "c2", "c1"]]
    assert diff_detections([(K1, "c1")], [(K1, "c1")])["exact"] is True


def test_peer_batches_are_in_commit_order_with_files_by_name():
    chunks = [chunk("c3", 1, T0, T0 + 2), chunk("c1", 0, T0, T0 + 1),
              chunk("c4", 1, T0, T0 + 2), chunk("c2", 0, T0, T0 + 1)]
    assert peer_batches(chunks) == [["c1", "c2"], ["c3", "c4"]]
