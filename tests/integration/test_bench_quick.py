"""`python -m bench --quick` end to end: the real stack, worker and producer processes; it must
write every figure and plot. It asserts what was written, never a speed: each figure is
recomputed here from what the bench measured it on - the phase's database (left on the test's
PostgreSQL server) and its worker's log - and each verdict checked there, not taken from the
bench. The peer and the baseline are left out here (the peer is a Spark application of its own:
two more start-ups).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import psycopg2
import pytest

from chunk_contract.layout import CHUNK_PREFIX, chunk_seq
from infra.local import postgres
from infra.local.stack import REPO_ROOT
from tests.support.workers import log_lines

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def processed(server_url: str, phase: str) -> list[tuple]:
    """(chunk_key, rows, event_time, applied_at) of a phase's database, in apply order."""
    url = postgres.with_database(server_url, f"bench_{phase}")
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT chunk_key, rows_good + rows_rejected, event_time, applied_at"
                    " FROM processed_chunks ORDER BY apply_order")
        rows = cur.fetchall()
    conn.close()
    return rows


def in_production_order(keys: list[str]) -> bool:
    seqs = [chunk_seq(key, CHUNK_PREFIX) for key in keys]
    return None not in seqs and seqs == sorted(set(seqs))


def test_quick_bench_writes_every_figure_and_plot(tmp_path, postgres_server_url):
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--no-peer", "--out", str(out),
         "--work-dir", str(tmp_path / "work"), "--data-root", str(tmp_path / "data")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=540,
        # the bench creates its databases on that server
        env={**os.environ, "DATABASE_URL": postgres_server_url})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "backlog steady" in done.stdout and "latency p50" in done.stdout

    results = json.loads((out / "results.json").read_text())
    config = results["config"]
    chunks = config["chunks"]
    assert (chunks, config["passes"], config["backlog_repeats"]) == (12, 2, 2)
    assert results["machine"]["cpu_count"] >= 1 and results["machine"]["memory_bytes"] > 0
    assert results["versions"]["pyspark"] and results["versions"]["postgresql"]
    assert len(results["git"]["commit"]) == 40

    def assert_load(load: dict) -> None:
        assert len(load["before"]) == len(load["after"]) == 3
        assert isinstance(load["noisy"], bool)

    logs = tmp_path / "work" / "logs"
    backlog = results["backlog"]
    assert backlog["steady_rows_per_s"]["n"] == 2 and isinstance(backlog["load"]["noisy"], bool)
    for r, repeat in enumerate(backlog["repeats"], start=1):
        # the phase's own database: every chunk once, in production order, every row
        applied = processed(postgres_server_url, f"backlog_{r}")
        assert in_production_order([key for key, *_ in applied]) and len(applied) == chunks
        assert repeat["chunks"] == chunks
        assert repeat["rows"] == sum(rows for _, rows, *_ in applied) == 2 * config["rows"]
        # the figures, recomputed from the worker's own "batch done" lines
        batches = [b for b in log_lines(logs / f"bench-backlog_{r}-worker.log", "batch done")
                   if b["keys"]]
        assert repeat["batch_sizes"] == [len(b["keys"]) for b in batches]
        rates = [(b["rows_good"] + b["rows_rejected"]) / b["batch_ms"] * 1000
                 for b in batches[1:]]
        assert rates and repeat["steady_rows_per_s"] == round(statistics.median(rates))
        assert repeat["fetch_ms_total_in_tasks"] == sum(b["fetch_ms"] or 0 for b in batches)
        # Spark is ready before the worker is (its "spark ready" line comes first)
        assert 0 < repeat["startup"]["spark_ready_s"] <= repeat["startup"]["ready_s"]
        assert_load(repeat["load"])

    nominal = results["nominal"]
    applied = processed(postgres_server_url, "nominal")
    latencies = [(at - event).total_seconds() for _, _, event, at in applied[:chunks]]
    assert nominal["per_chunk_s"] == [round(s, 3) for s in latencies]
    assert nominal["latency_s"]["max"] == round(max(latencies), 3)
    assert nominal["latency_s"]["p50"] == pytest.approx(statistics.median(latencies), abs=1e-3)
    assert_load(nominal["load"])

    cost = results["cost"]
    assert cost["positions"] == list(range(1, chunks + 1))
    assert cost["window_last"][1] == chunks and cost["total_ratio"] is not None

    recovery = results["recovery"]
    # the recovery phase ran on the nominal phase's database, after its chunks: checked there
    streamed = [key for key, *_ in applied[chunks:]]
    assert len(streamed) == recovery["chunks_streamed"] and in_production_order(streamed)
    assert recovery["apply_order_is_production_order"] and recovery["applied_once"]
    assert recovery["dlq_visible"] == 0
    in_flight = recovery["in_flight_at_kill"]
    assert in_flight and set(in_flight) <= {Path(key).name for key in streamed}
    # the worker killed: its log shows the restart; every chunk in flight applied after it
    kill_log = logs / "bench-nominal-worker.log"
    starts = [datetime.fromisoformat(line["timestamp"])
              for line in log_lines(kill_log, "worker started")]
    assert len(starts) == 2  # the nominal worker, and the one started after the kill
    applied_at = {Path(key).name: at for key, _, _, at in applied}
    assert all(applied_at[name] > starts[1] for name in in_flight)
    # the new worker was spawned after the kill: its start-up is part of kill -> ready
    assert 0 < recovery["restart_to_ready_s"] <= recovery["kill_to_ready_s"] + 0.01
    assert_load(recovery["load"])

    assert [s["phase"] for s in results["startup"]["per_start"]] == [
        "backlog-1", "backlog-2", "nominal", "recovery"]

    memory = results["memory"]
    assert memory["peak_bytes"]["python"] > 0 and memory["peak_bytes"]["jvm"] > 0
    assert memory["peak_total_bytes"] >= memory["peak_bytes"]["jvm"]

    assert results["peer"] == {"skipped": True, "reason": "--no-peer"}
    assert results["baseline"]["skipped"]
    assert set(results["targets"]) == {
        "backlog_steady_rows_per_s", "latency_p50_s", "latency_p99_s",
        "cost_last10_vs_first10_after_warm_up", "memory_peak_bytes", "startup_s", "recovery_s",
        "baseline_factor"}
    assert all(isinstance(t["noisy"], bool) for t in results["targets"].values())
    for plot in ("latency.png", "cost_vs_history.png", "backlog_stages.png", "memory.png"):
        assert (out / plot).read_bytes().startswith(b"\x89PNG"), plot
