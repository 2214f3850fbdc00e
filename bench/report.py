"""The bench's plots and printed table, from its results dictionary."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # after use(): the backend must be chosen first


def plot(results: dict, out: Path) -> None:
    nominal = results["nominal"]["per_chunk"]
    positions = list(range(1, len(nominal["latency_s"]) + 1))

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(positions, nominal["latency_s"], marker=".", label="S3 put -> commit")
    ax.axhline(1.0, color="green", linestyle="--", linewidth=1, label="p50 target 1 s")
    ax.axhline(2.5, color="red", linestyle="--", linewidth=1, label="p99 target 2.5 s")
    ax.set(xlabel="chunk", ylabel="seconds", title="Latency per chunk at the nominal rate")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency_per_chunk.png", dpi=110)
    plt.close(fig)

    baseline = results["baseline"]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(positions, nominal["total_ms"], marker=".", label="ours: Spark + apply")
    ax.plot(positions, nominal["apply_ms"], marker=".", label="ours: apply (PostgreSQL)")
    ax.plot(baseline["positions"], baseline["per_chunk_ms"], marker="o",
            label="baseline: recompute all rows with Spark")
    ax.set(xlabel="chunk position", ylabel="ms per chunk", title="Cost per chunk vs history")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "cost_vs_history.png", dpi=110)
    plt.close(fig)


def _fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}{unit}"


def summary_table(results: dict) -> str:
    backlog, nominal = results["backlog"], results["nominal"]
    latency = nominal["latency_s"]
    stages = backlog["stage_seconds"]
    memory = results["memory_peak_mib"]
    rows = [
        ("backlog drain", f"{backlog['rows_per_s']:,} rows/s", ">= 50,000 rows/s"),
        ("  stages (s)", ", ".join(f"{k} {v:.1f}" for k, v in stages.items()), ""),
        ("latency p50", _fmt(latency["p50"], " s"), "<= 1 s"),
        ("latency p90 / p99 / max",
         " / ".join(_fmt(latency[k], " s") for k in ("p90", "p99", "max")), "p99 <= 2.5 s"),
        ("cost: median last 10 / first 10", _fmt(nominal["history_ratio_last10_first10"], "x"),
         "<= 1.2x"),
        ("cost: chunk 60 / chunk 5", _fmt(nominal["chunk60_over_chunk5"], "x"), "<= 1.2x"),
        ("peak RSS python + JVM", f"{memory['python']} + {memory['jvm']} MiB", "< 2,048 MiB"),
        ("baseline / ours at last chunk", _fmt(results["baseline_over_ours_at_last_chunk"], "x",
                                               1), ""),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'figure':<{width}}  {'measured':<34}  target", "-" * (width + 50)]
    lines += [f"{name:<{width}}  {value:<34}  {target}" for name, value, target in rows]
    return "\n".join(lines)
