"""The figures of ``make bench``, computed from what the run recorded: pure functions only.

Inputs are plain values: the worker's "batch done" log lines (dicts), the rows of
``processed_chunks`` (``ChunkRow``) and the baseline's timings. Nothing here starts a process
or talks to a service, so the arithmetic is tested with small hand-made inputs.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

# The stages a batch's time is split into, as the worker logs them (ms, per batch).
# fetch_ms (S3 GET on the executors, summed over tasks) is part of spark_ms.
STAGES = ("dedup_ms", "spark_ms", "apply_ms", "quarantine_ms", "delete_ms", "publish_ms")

# The targets of docs/performance.md.
TARGET_BACKLOG_ROWS_PER_S = 50_000
TARGET_P50_S = 1.0
TARGET_P99_S = 2.5
TARGET_COST_RATIO = 1.2
TARGET_MEMORY_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class ChunkRow:
    """One ``processed_chunks`` row, as the bench reads it."""

    chunk_key: str
    apply_order: int
    rows: int  # good + rejected
    event_time: datetime | None
    applied_at: datetime
    apply_ms: int
    spark_ms: int  # the whole micro-batch's Spark job


def batch_lines(lines: Iterable[str]) -> list[dict]:
    """The worker's "batch done" records from its output (other lines are skipped)."""
    batches = []
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("message") == "batch done" and record.get("chunks", 0) > 0:
            batches.append(record)
    return batches


def percentile_cont(values: Iterable[float], fraction: float) -> float | None:
    """PostgreSQL's ``percentile_cont(fraction)`` over ``values`` (linear interpolation between
    the closest ranks, NumPy's ``method="linear"``); None when there are no values.

    Same operations in the same order as PostgreSQL's orderedsetaggs.c, so the result is
    identical bit for bit: position = fraction * (n - 1); first + (position - floor) * (second
    - first). The reference model of the detection rules relies on that.
    """
    ordered = sorted(values)
    if not ordered:
        return None
    position = fraction * (len(ordered) - 1)
    first_row, second_row = math.floor(position), math.ceil(position)
    first = ordered[first_row]
    if second_row == first_row:
        return first
    return first + (position - first_row) * (ordered[second_row] - first)


def distribution(values: Sequence[float], places: int = 3) -> dict[str, float]:
    return {
        "n": len(values),
        **{f"p{q}": round(percentile_cont(values, q / 100), places) for q in (50, 90, 99)},
        "max": round(max(values), places),
        "mean": round(statistics.fmean(values), places),
    }


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def chunk_batch_sizes(batches: Sequence[dict]) -> dict[str, int]:
    """chunk key -> the number of chunks in the micro-batch that applied it."""
    return {key: len(b["keys"]) for b in batches for key in b.get("keys", [])}


def backlog_figures(batches: Sequence[dict], chunks: Sequence[ChunkRow]) -> dict:
    """Rows/s from the first receive to the last commit, and where the time went."""
    if not batches or not chunks:
        raise ValueError("no batch applied any chunk")
    first_receive = min(_parse_time(b["received_at"]) for b in batches)
    last_commit = max(c.applied_at for c in chunks)
    wall_s = (last_commit - first_receive).total_seconds()
    rows = sum(c.rows for c in chunks)
    stages = {stage: sum(b.get(stage) or 0 for b in batches) for stage in STAGES}
    fetch_ms = sum(b.get("fetch_ms") or 0 for b in batches)
    busy_ms = sum(b.get("batch_ms") or 0 for b in batches)
    return {
        "chunks": len(chunks),
        "rows": rows,
        "wall_s": round(wall_s, 3),
        "rows_per_s": round(rows / wall_s) if wall_s > 0 else None,
        "batches": len(batches),
        "batch_sizes": [len(b["keys"]) for b in batches],
        "stage_ms_total": stages,
        # executor-side S3 GET + checks, summed over parallel tasks: inside spark_ms
        "fetch_ms_total_in_tasks": fetch_ms,
        # receive -> batch done, summed; the rest of wall_s is receiving and the batch window
        # (slightly negative when nothing waits: the last batch publishes after its commit)
        "batch_ms_total": busy_ms,
        "outside_batches_ms": round(wall_s * 1000 - busy_ms),
        "per_batch": [
            {"chunks": len(b["keys"]), "rows": b.get("rows_good", 0) + b.get("rows_rejected", 0),
             **{stage: b.get(stage) or 0 for stage in (*STAGES, "fetch_ms", "batch_ms")}}
            for b in batches
        ],
    }


def latency_figures(chunks: Sequence[ChunkRow]) -> dict:
    """Per chunk: S3 put (the event's time) -> commit, in seconds, in apply order."""
    timed = [c for c in sorted(chunks, key=lambda c: c.apply_order) if c.event_time is not None]
    if not timed:
        raise ValueError("no chunk carries an S3 event time")
    latencies = [(c.applied_at - c.event_time).total_seconds() for c in timed]
    return {
        "chunks": len(timed),
        "latency_s": distribution(latencies),
        "per_chunk_s": [round(v, 3) for v in latencies],
    }


def cost_figures(chunks: Sequence[ChunkRow], batch_sizes: dict[str, int]) -> dict:
    """Cost of each chunk against its position: apply, and apply + its share of the batch's
    Spark job. Ratios: median of the last ten over the first ten, and the last chunk over
    chunk 5 — the last *full* one for the target, since the data set's last chunk is partial
    (594,643 rows: 4,643 in chunk 60) and a smaller chunk is cheaper."""
    ordered = sorted(chunks, key=lambda c: c.apply_order)
    apply_ms = [float(c.apply_ms) for c in ordered]
    total_ms = [c.apply_ms + c.spark_ms / batch_sizes.get(c.chunk_key, 1) for c in ordered]
    full = max((c.rows for c in ordered), default=0)
    last_full = max((i for i, c in enumerate(ordered, start=1) if c.rows == full), default=0)
    return {
        "positions": [c.apply_order for c in ordered],
        "rows": [c.rows for c in ordered],
        "apply_ms": apply_ms,
        "total_ms": [round(v, 1) for v in total_ms],
        "apply_ratio_last10_first10": edge_ratio(apply_ms),
        "total_ratio_last10_first10": edge_ratio(total_ms),
        "chunk_last_vs_5": position_ratio(total_ms, len(total_ms), 5),
        "last_full_chunk": last_full,
        "chunk_last_full_vs_5": position_ratio(total_ms, last_full, 5),
        "apply_chunk_last_full_vs_5": position_ratio(apply_ms, last_full, 5),
    }


def edge_ratio(values: Sequence[float], width: int = 10) -> float | None:
    """median(last ``width``) / median(first ``width``); None when too few values to compare."""
    width = min(width, len(values) // 2)
    if width == 0:
        return None
    first = statistics.median(values[:width])
    last = statistics.median(values[-width:])
    return round(last / first, 3) if first else None


def position_ratio(values: Sequence[float], numerator: int, denominator: int) -> float | None:
    """values[numerator] / values[denominator], positions 1-based; None when out of range."""
    if not 1 <= denominator <= len(values) or not 1 <= numerator <= len(values):
        return None
    below = values[denominator - 1]
    return round(values[numerator - 1] / below, 3) if below else None


def target_checks(results: dict) -> dict[str, dict]:
    """Each performance target: measured, target, met, and the margin."""
    checks: dict[str, dict] = {}

    def check(name: str, measured: float | None, target: float, higher_is_better: bool) -> None:
        if measured is None:
            checks[name] = {"measured": None, "target": target, "met": None}
            return
        met = measured >= target if higher_is_better else measured <= target
        checks[name] = {"measured": measured, "target": target, "met": met,
                        "measured_over_target": round(measured / target, 3)}

    check("backlog_rows_per_s", results["backlog"]["rows_per_s"],
          TARGET_BACKLOG_ROWS_PER_S, True)
    latency = results["nominal"]["latency_s"]
    check("latency_p50_s", latency["p50"], TARGET_P50_S, False)
    check("latency_p99_s", latency["p99"], TARGET_P99_S, False)
    check("cost_last_full_chunk_vs_5", results["cost"]["chunk_last_full_vs_5"],
          TARGET_COST_RATIO, False)
    check("memory_peak_bytes", results["memory"]["peak_total_bytes"],
          TARGET_MEMORY_BYTES, False)
    return checks
