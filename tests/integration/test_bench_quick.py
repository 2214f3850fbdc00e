"""`python -m bench --quick` end to end: the real stack, worker and producer processes, the
baseline; it must write every figure and plot. It asserts what was written, never a speed.
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
        [sys.executable, "-m", "bench", "--quick", "--out", str(out),
         "--work-dir", str(tmp_path / "work"), "--data-root", str(tmp_path / "data")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=540,
        # the bench creates its databases on that server
        env={**os.environ, "DATABASE_URL": postgres_server_url})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "backlog drain" in done.stdout and "latency p50" in done.stdout

    results = json.loads((out / "results.json").read_text())
    chunks = results["config"]["chunks"]
    assert chunks == 6
    assert results["machine"]["cpu_count"] >= 1 and results["machine"]["memory_bytes"] > 0
    assert results["versions"]["pyspark"] and results["versions"]["postgresql"]
    assert len(results["git"]["commit"]) == 40

    backlog = results["backlog"]
    assert backlog["chunks"] == chunks and backlog["rows"] == results["config"]["rows"]
    assert backlog["rows_per_s"] > 0 and sum(backlog["batch_sizes"]) == chunks
    assert set(backlog["stage_ms_total"]) >= {"spark_ms", "apply_ms", "delete_ms", "publish_ms"}
    assert backlog["fetch_ms_total_in_tasks"] > 0

    nominal = results["nominal"]
    assert len(nominal["per_chunk_s"]) == chunks
    assert set(nominal["latency_s"]) >= {"p50", "p90", "p99", "max"}
    assert nominal["latency_s"]["p50"] <= nominal["latency_s"]["max"]

    cost = results["cost"]
    assert cost["positions"] == list(range(1, chunks + 1))
    assert len(cost["apply_ms"]) == len(cost["total_ms"]) == chunks
    assert cost["apply_ratio_last10_first10"] is not None

    memory = results["memory"]
    assert memory["peak_bytes"]["python"] > 0 and memory["peak_bytes"]["jvm"] > 0
    assert memory["peak_total_bytes"] >= memory["peak_bytes"]["jvm"]

    baseline = results["baseline"]
    assert len(baseline["per_chunk_ms"]) == chunks and baseline["ratio_at_last_chunk"] > 0
    assert set(results["targets"]) == {"backlog_rows_per_s", "latency_p50_s", "latency_p99_s",
                                       "cost_last_full_chunk_vs_5", "memory_peak_bytes"}
    for plot in ("latency.png", "cost_vs_history.png", "backlog_stages.png", "memory.png"):
        assert (out / plot).read_bytes().startswith(b"\x89PNG"), plot

