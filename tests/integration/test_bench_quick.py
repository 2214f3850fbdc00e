"""`python -m bench --quick` end to end: the real stack, worker and producer processes; it must
write every figure and plot. It asserts what was written, never a speed. The peer and the
baseline are left out here (the peer is a Spark application of its own: two more start-ups).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from infra.local.stack import REPO_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


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

    backlog = results["backlog"]
    assert backlog["steady_rows_per_s"]["n"] == 2 and isinstance(backlog["load"]["noisy"], bool)
    for repeat in backlog["repeats"]:
        assert repeat["chunks"] == chunks and repeat["rows"] == 2 * config["rows"]
        assert repeat["steady_rows_per_s"] > 0 and sum(repeat["batch_sizes"]) == chunks
        assert repeat["startup"]["ready_s"] > 0
        assert repeat["fetch_ms_total_in_tasks"] > 0
        assert_load(repeat["load"])

    nominal = results["nominal"]
    assert len(nominal["per_chunk_s"]) == chunks
    assert nominal["latency_s"]["p50"] <= nominal["latency_s"]["max"]
    assert_load(nominal["load"])

    cost = results["cost"]
    assert cost["positions"] == list(range(1, chunks + 1))
    assert cost["window_last"][1] == chunks and cost["total_ratio"] is not None

    recovery = results["recovery"]
    assert recovery["in_flight_at_kill"] and recovery["kill_to_in_flight_applied_s"] > 0
    assert recovery["restart_to_ready_s"] > 0
    assert recovery["apply_order_is_production_order"] and recovery["applied_once"]
    assert recovery["dlq_visible"] == 0
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
