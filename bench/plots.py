"""The PNG plots of a bench run (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use("Agg")

from bench.measure import STAGES, TARGET_MEMORY_BYTES, TARGET_P50_S, TARGET_P99_S

MIB = 1024**2


def latency_plot(results: dict, out: Path) -> Path:
    nominal = results["nominal"]
    values = nominal["per_chunk_s"]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(range(1, len(values) + 1), values, marker=".", label="S3 put -> commit")
    ax.axhline(nominal["latency_s"]["p50"], color="tab:green", ls="--",
               label=f"p50 {nominal['latency_s']['p50']:.2f} s")
    ax.axhline(nominal["latency_s"]["p99"], color="tab:orange", ls="--",
               label=f"p99 {nominal['latency_s']['p99']:.2f} s")
    ax.axhline(TARGET_P50_S, color="tab:green", ls=":", label="target p50")
    ax.axhline(TARGET_P99_S, color="tab:red", ls=":", label="target p99")
    ax.set(xlabel="chunk (apply order)", ylabel="latency (s)", ylim=(0, None),
           title=f"Detection latency at {results['config']['interval_s']} s per chunk")
    ax.legend(fontsize=8)
    return _save(fig, out / "latency.png")


def cost_plot(results: dict, out: Path) -> Path:
    cost, baseline = results["cost"], results["baseline"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(cost["positions"], cost["total_ms"], marker=".", label="worker: Spark share + apply")
    ax.plot(cost["positions"], cost["apply_ms"], marker=".", label="worker: apply (PostgreSQL)")
    base = baseline["per_chunk_ms"]
    ax.plot(range(1, len(base) + 1), base, marker=".",
            label="baseline: recompute all rows with Spark")
    ax.set(xlabel="chunk position", ylabel="ms per chunk", ylim=(0, None),
           title="Cost per chunk against history")
    ax.legend(fontsize=8)
    return _save(fig, out / "cost_vs_history.png")


def backlog_plot(results: dict, out: Path) -> Path:
    batches = results["backlog"]["per_batch"]
    fig, ax = plt.subplots(figsize=(9, 4))
    bottom = [0.0] * len(batches)
    xs = range(1, len(batches) + 1)
    for stage in STAGES:
        values = [b[stage] for b in batches]
        if not any(values):
            continue
        ax.bar(xs, values, bottom=bottom, label=stage.removesuffix("_ms"))
        bottom = [a + b for a, b in zip(bottom, values, strict=True)]
    ax.plot(xs, [b["batch_ms"] for b in batches], "k.", label="whole batch")
    ax.set_xticks(list(xs), [f"{i}\n({b['chunks']} chunks)" for i, b in enumerate(batches, 1)])
    ax.set(xlabel="micro-batch", ylabel="ms",
           title=f"Backlog drain: {results['backlog']['rows_per_s']:,} rows/s, "
                 f"time per micro-batch by stage")
    ax.legend(fontsize=8)
    return _save(fig, out / "backlog_stages.png")


def memory_plot(series: dict[str, list[dict]], out: Path) -> Path:
    fig, axes = plt.subplots(1, len(series), figsize=(9, 4), sharey=True, squeeze=False)
    for ax, (label, samples) in zip(axes[0], series.items(), strict=True):
        ts = [s["t_s"] for s in samples]
        for part in ("python", "jvm", "python_workers"):
            ax.plot(ts, [s[part] / MIB for s in samples], label=part)
        ax.plot(ts, [sum(v for k, v in s.items() if k != "t_s") / MIB for s in samples],
                "k", label="total")
        ax.axhline(TARGET_MEMORY_BYTES / MIB, color="tab:red", ls=":", label="target")
        ax.set(title=label, xlabel="s since worker start")
    axes[0][0].set_ylabel("RSS (MiB)")
    axes[0][0].legend(fontsize=8)
    return _save(fig, out / "memory.png")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
