"""The PNG plots of a bench run (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use("Agg")

from bench.measure import STAGES, TARGET_MEMORY_BYTES, TARGET_P50_S, TARGET_P99_S

MIB = 1024**2


def _pass_boundaries(ax, results: dict, count: int) -> None:
    """Dotted grey lines where the stream starts the data set again."""
    per_pass = results["config"].get("chunks_per_pass") or count
    for start in range(per_pass, count, per_pass):
        ax.axvline(start + 0.5, color="0.8", ls=":", lw=0.8)


def latency_plot(results: dict, out: Path) -> Path:
    nominal = results["nominal"]
    values = nominal["per_chunk_s"]
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.plot(range(1, len(values) + 1), values, lw=0.8, marker=".", ms=3,
            label="S3 put -> commit")
    ax.axhline(nominal["latency_s"]["p50"], color="tab:green", ls="--",
               label=f"p50 {nominal['latency_s']['p50']:.2f} s")
    ax.axhline(nominal["latency_s"]["p99"], color="tab:orange", ls="--",
               label=f"p99 {nominal['latency_s']['p99']:.2f} s")
    ax.axhline(TARGET_P50_S, color="tab:green", ls=":", label="target p50")
    ax.axhline(TARGET_P99_S, color="tab:red", ls=":", label="target p99")
    _pass_boundaries(ax, results, len(values))
    ax.set(xlabel="chunk (apply order; dotted: the data set starts again)",
           ylabel="latency (s)", ylim=(0, None),
           title=f"Detection latency per chunk at {results['config']['interval_s']} s per chunk")
    ax.legend(fontsize=8)
    return _save(fig, out / "latency.png")


def cost_plot(results: dict, out: Path) -> Path:
    cost, baseline = results["cost"], results["baseline"]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    ax.plot(cost["positions"], cost["total_ms"], lw=0.8, marker=".", ms=3,
            label="worker: Spark share + apply")
    ax.plot(cost["positions"], cost["apply_ms"], lw=0.8, marker=".", ms=3,
            label="worker: apply (PostgreSQL)")
    base = baseline["per_chunk_ms"]
    if base:
        ax.plot(range(1, len(base) + 1), base, marker=".", ms=3,
                label="baseline: recompute all rows with Spark (first pass)")
    for window, name in ((cost.get("window_first"), "first ten after warm-up"),
                         (cost.get("window_last"), "last ten")):
        if window:
            ax.axvspan(window[0] - 0.5, window[1] + 0.5, color="tab:grey", alpha=0.15)
            ax.annotate(name, (window[0], 0), xytext=(0, 4), textcoords="offset points",
                        fontsize=7)
    _pass_boundaries(ax, results, len(cost["positions"]))
    ax.set(xlabel="chunk position", ylabel="ms per chunk", ylim=(0, None),
           title=f"Cost per chunk against history: last ten / first ten after warm-up "
                 f"{cost.get('total_ratio')}")
    ax.legend(fontsize=8)
    return _save(fig, out / "cost_vs_history.png")


def backlog_plot(results: dict, out: Path) -> Path:
    repeats = results["backlog"]["repeats"]
    fig, axes = plt.subplots(len(repeats), 1, figsize=(10, 3 * len(repeats)), squeeze=False)
    for i, (ax, repeat) in enumerate(zip(axes[:, 0], repeats, strict=True), 1):
        batches = repeat["per_batch"]
        bottom = [0.0] * len(batches)
        xs = range(1, len(batches) + 1)
        for stage in STAGES:
            values = [b[stage] for b in batches]
            if not any(values):
                continue
            ax.bar(xs, values, bottom=bottom, label=stage.removesuffix("_ms"))
            bottom = [a + b for a, b in zip(bottom, values, strict=True)]
        ax.plot(xs, [b["batch_ms"] for b in batches], "k.", label="whole batch")
        ax.set_xticks(list(xs), [f"{j}\n({b['chunks']})" for j, b in enumerate(batches, 1)],
                      fontsize=7)
        steady = repeat["steady_rows_per_s"]
        ax.set(ylabel="ms", title=f"Backlog drain {i}: steady "
               f"{'-' if steady is None else f'{steady:,}'} rows/s (median of the batches "
               f"after the first), time per micro-batch (chunks) by stage")
        ax.title.set_fontsize(9)
    axes[-1, 0].set_xlabel("micro-batch (chunks)")
    axes[0, 0].legend(fontsize=7, ncol=4)
    return _save(fig, out / "backlog_stages.png")


def memory_plot(series: dict[str, list[dict]], out: Path) -> Path:
    """RSS over time per process kind, one panel per sampled process (worker or peer)."""
    columns = min(3, max(1, len(series)))
    rows = -(-len(series) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.5 * rows), sharey=True,
                             squeeze=False)
    for ax, (label, samples) in zip(axes.flat, series.items(), strict=False):
        ts = [s["t_s"] for s in samples]
        for part, name in (("python", "driver (Python)"), ("jvm", "JVM"),
                           ("python_workers", "Spark's Python workers")):
            ax.plot(ts, [s[part] / MIB for s in samples], label=name)
        ax.plot(ts, [sum(v for k, v in s.items() if k != "t_s") / MIB for s in samples],
                "k", label="total")
        ax.axhline(TARGET_MEMORY_BYTES / MIB, color="tab:red", ls=":", label="target")
        ax.set(title=label, xlabel="s since sampling began (process start)")
    for ax in list(axes.flat)[len(series):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("RSS (MiB)")
    axes[0][0].legend(fontsize=7)
    return _save(fig, out / "memory.png")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
