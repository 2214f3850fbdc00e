"""`make bench ARGS="--quick"` runs end to end and writes every figure and plot.

It asserts that the outputs exist and hold numbers, never how fast anything was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def test_the_quick_bench_writes_results_and_plots(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path / "results"),
         "--work-dir", str(tmp_path / "work")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run,) = (tmp_path / "results").iterdir()
    results = json.loads((run / "results.json").read_text())
    assert {"machine", "backlog", "nominal", "baseline", "memory_peak_mib"} <= results.keys()
    assert results["machine"]["cores"] >= 1 and results["machine"]["git_commit"]
    assert results["backlog"]["chunks"] == results["chunks"] == 6
    assert results["backlog"]["rows_per_s"] > 0
    assert set(results["backlog"]["stage_seconds"]) == {"spark", "apply", "publish", "other"}
    assert len(results["nominal"]["per_chunk"]["latency_s"]) == 6
    assert all(results["nominal"]["latency_s"][k] > 0 for k in ("p50", "p90", "p99", "max"))
    assert results["baseline"]["positions"] == [1, 2, 3, 4, 5, 6]
    assert len(results["baseline"]["per_chunk_ms"]) == 6
    assert results["memory_peak_mib"]["python"] > 0 and results["memory_peak_mib"]["jvm"] > 0
    for plot in ("latency_per_chunk.png", "cost_vs_history.png"):
        assert (run / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "backlog drain" in result.stdout
