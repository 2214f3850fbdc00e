"""The figures of ``make bench``, computed from what the run recorded: pure functions only.

Inputs are plain values: the worker's JSON log lines (dicts), the rows of ``processed_chunks``
(``ChunkRow``), detections as dicts, load averages and the baseline's timings. Nothing here
starts a process or talks to a service, so the arithmetic is tested with small hand-made inputs.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

# The stages a batch's time is split into, as the worker logs them (ms, per batch).
# fetch_ms (S3 GET on the executors, summed over tasks) is part of spark_ms.
STAGES = ("dedup_ms", "spark_ms", "apply_ms", "quarantine_ms", "delete_ms", "publish_ms")

# The targets of docs/performance.md.
TARGET_BACKLOG_ROWS_PER_S = 100_000  # steady: median over the batches after the first
TARGET_P50_S = 0.35
TARGET_P99_S = 0.7
TARGET_COST_RATIO = 1.1  # the last ten chunks against the first ten after warm-up
TARGET_MEMORY_BYTES = int(1.2 * 1024**3)
TARGET_STARTUP_S = 6.0  # process start -> "worker started" (ready to receive)
TARGET_RECOVERY_S = 60.0  # kill -9 -> the chunks in flight at the kill applied
TARGET_BASELINE_FACTOR = 10.0  # recompute-all at chunk 60 / ours at chunk 60

# Chunks 1-10 of a stream pay for the worker's warm-up (JIT, caches): the cost ratio compares
# the last ten chunks with chunks 11-20.
COST_WARM_UP_CHUNKS = 10
COST_WINDOW = 10


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


def log_records(lines: Iterable[str]) -> list[dict]:
    """The JSON records of a process's output (Spark's own lines and broken lines skipped)."""
    records = []
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def batch_lines(lines: Iterable[str]) -> list[dict]:
    """The worker's "batch done" records from its output (other lines are skipped)."""
    return [r for r in log_records(lines)
            if r.get("message") == "batch done" and r.get("chunks", 0) > 0]


def startup_figures(records: Iterable[dict], started_at: datetime) -> dict:
    """One worker start: seconds from ``started_at`` (just before the process was spawned) to
    its "spark ready" and "worker started" (ready to receive) lines, the first of each."""
    ready = spark = warm = None
    for record in records:
        message = record.get("message")
        if message == "spark ready" and spark is None:
            spark = record
        elif message == "worker started" and ready is None:
            ready = record
        elif message == "spark warm" and warm is None:
            warm = record

    def since(record: dict | None) -> float | None:
        if record is None or "timestamp" not in record:
            return None
        return round((_parse_time(record["timestamp"]) - started_at).total_seconds(), 3)

    info = spark or {}
    return {"ready_s": since(ready), "spark_ready_s": since(spark),
            # the warm-up runs on the Spark thread while the worker already receives
            "warm_s": since(warm),
            # the key weights read from the PostgreSQL cache (every start but the first of
            # a CustomerImportance version) or computed from the file
            "weights_cached": info.get("weights_cached"),
            "spark_start_ms": info.get("spark_start_ms"),
            "start_up_ms": info.get("start_up_ms")}


def spread(values: Iterable[float | None], places: int = 3) -> dict:
    """Median, min and max of the values that exist (a repeated figure); None when none do."""
    present = [v for v in values if v is not None]
    if not present:
        return {"n": 0, "median": None, "min": None, "max": None}
    return {"n": len(present), "median": round(statistics.median(present), places),
            "min": round(min(present), places), "max": round(max(present), places)}


def noisy(load_before: Sequence[float] | None, load_after: Sequence[float] | None,
          threshold: float) -> bool:
    """Whether a figure was measured on a busy machine: the 1-minute load average just before
    its phase, or just after it (after the quiet wait that follows), above ``threshold``."""
    return any(load is not None and load[0] > threshold for load in (load_before, load_after))


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


def batch_rows_per_s(batch: dict) -> float | None:
    """One micro-batch's rows over its own time (receive done -> batch done)."""
    rows = (batch.get("rows_good") or 0) + (batch.get("rows_rejected") or 0)
    ms = batch.get("batch_ms") or 0
    return rows / (ms / 1000) if ms > 0 else None


def steady_rows_per_s(batches: Sequence[dict]) -> float | None:
    """The steady backlog rate: the median over the batches after the first (the first pays
    for what start-up left cold) of each batch's rows / its batch time."""
    rates = [r for r in map(batch_rows_per_s, batches[1:]) if r is not None]
    return round(statistics.median(rates)) if rates else None


def backlog_figures(batches: Sequence[dict], chunks: Sequence[ChunkRow]) -> dict:
    """The steady rate (median over the batches after the first), the end-to-end rate (first
    receive to last commit), and where the time went."""
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
        "steady_rows_per_s": steady_rows_per_s(batches),
        "per_batch_rows_per_s": [None if r is None else round(r)
                                 for r in map(batch_rows_per_s, batches)],
        "wall_s": round(wall_s, 3),
        # secondary: first receive -> last commit, the first batch and the gaps included
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
    """Per chunk: S3 put (the event's time) -> ``applied_at`` (taken inside the apply's
    transaction, so up to one apply before its commit), in seconds, in apply order."""
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
    Spark job. The figure: median of the last ten over the median of the first ten after
    warm-up (chunks 11-20; on 300 chunks, 291-300 against 11-20). Secondary: the same over the
    very first ten, and the last *full* chunk over chunk 5 (the data set's last chunk is partial
    - 594,643 rows: 4,643 in chunk 60 - and a smaller chunk is cheaper)."""
    ordered = sorted(chunks, key=lambda c: c.apply_order)
    apply_ms = [float(c.apply_ms) for c in ordered]
    total_ms = [c.apply_ms + c.spark_ms / batch_sizes.get(c.chunk_key, 1) for c in ordered]
    full = max((c.rows for c in ordered), default=0)
    last_full = max((i for i, c in enumerate(ordered, start=1) if c.rows == full), default=0)
    first, last = edge_windows(len(ordered), COST_WINDOW, COST_WARM_UP_CHUNKS)
    return {
        "positions": [c.apply_order for c in ordered],
        "rows": [c.rows for c in ordered],
        "apply_ms": apply_ms,
        "total_ms": [round(v, 1) for v in total_ms],
        # chunk positions compared (1-based, inclusive), None when too few chunks
        "window_first": first,
        "window_last": last,
        "total_ratio": edge_ratio(total_ms, COST_WINDOW, COST_WARM_UP_CHUNKS),
        "apply_ratio": edge_ratio(apply_ms, COST_WINDOW, COST_WARM_UP_CHUNKS),
        "apply_ratio_last10_first10": edge_ratio(apply_ms),
        "total_ratio_last10_first10": edge_ratio(total_ms),
        "chunk_last_vs_5": position_ratio(total_ms, len(total_ms), 5),
        "last_full_chunk": last_full,
        "chunk_last_full_vs_5": position_ratio(total_ms, last_full, 5),
        "apply_chunk_last_full_vs_5": position_ratio(apply_ms, last_full, 5),
    }


def edge_windows(count: int, width: int = 10, warm_up: int = 0
                 ) -> tuple[list[int] | None, list[int] | None]:
    """The positions (1-based, inclusive) ``edge_ratio`` compares among ``count`` values: the
    ``width`` after the first ``warm_up``, and the last ``width``. With too few values the
    warm-up shrinks first, then the width, so that the two windows never overlap."""
    warm_up = max(0, min(warm_up, count - 2 * width))
    width = min(width, (count - warm_up) // 2)
    if width == 0:
        return None, None
    return [warm_up + 1, warm_up + width], [count - width + 1, count]


def edge_ratio(values: Sequence[float], width: int = 10, warm_up: int = 0) -> float | None:
    """median(last ``width``) / median(the ``width`` after the first ``warm_up``); None when
    there are too few values to compare (see ``edge_windows``)."""
    first, last = edge_windows(len(values), width, warm_up)
    if first is None or last is None:
        return None
    below = statistics.median(values[first[0] - 1:first[1]])
    above = statistics.median(values[last[0] - 1:last[1]])
    return round(above / below, 3) if below else None


def position_ratio(values: Sequence[float], numerator: int, denominator: int) -> float | None:
    """values[numerator] / values[denominator], positions 1-based; None when out of range."""
    if not 1 <= denominator <= len(values) or not 1 <= numerator <= len(values):
        return None
    below = values[denominator - 1]
    return round(values[numerator - 1] / below, 3) if below else None


def _detection_index(rows: Iterable[Mapping]) -> tuple[dict[tuple[str, str, str], str], int]:
    """(pattern, merchant, customer) -> the chunk (file name) it fired at, the first firing
    kept; and how many rows repeated a key (an emit-once breach)."""
    fired: dict[tuple[str, str, str], str] = {}
    repeats = 0
    for row in rows:
        key = (str(row["pattern_id"]), str(row["merchant_id"]), str(row.get("customer_name") or ""))
        chunk = str(row.get("chunk_key") or "").rstrip("/").rsplit("/", 1)[-1]
        if key in fired:
            repeats += 1
        else:
            fired[key] = chunk
    return fired, repeats


def compare_detections(ours: Iterable[Mapping], peer: Iterable[Mapping]) -> dict:
    """Our detections against another implementation's, on the same chunks.

    Each row: ``pattern_id``, ``merchant_id``, ``customer_name`` ('' or None for PatId3) and
    ``chunk_key``, the chunk after which it fired (an S3 key or a file path: compared by file
    name). ``exact`` when both found the same detections, each after the same chunk, once.
    """
    our_index, our_repeats = _detection_index(ours)
    peer_index, peer_repeats = _detection_index(peer)

    def as_rows(keys: Iterable[tuple[str, str, str]], index: dict) -> list[dict]:
        return [{"pattern_id": p, "merchant_id": m, "customer_name": c, "chunk": index[(p, m, c)]}
                for p, m, c in sorted(keys)]

    both = our_index.keys() & peer_index.keys()
    elsewhere = [{"pattern_id": p, "merchant_id": m, "customer_name": c,
                  "ours_chunk": our_index[(p, m, c)], "peer_chunk": peer_index[(p, m, c)]}
                 for p, m, c in sorted(both) if our_index[(p, m, c)] != peer_index[(p, m, c)]]
    only_ours = as_rows(our_index.keys() - peer_index.keys(), our_index)
    only_peer = as_rows(peer_index.keys() - our_index.keys(), peer_index)
    return {
        "exact": not (only_ours or only_peer or elsewhere or our_repeats or peer_repeats),
        "ours": len(our_index), "peer": len(peer_index),
        "same_key_same_chunk": len(both) - len(elsewhere),
        "only_ours": only_ours, "only_peer": only_peer, "fired_elsewhere": elsewhere,
        "repeated_ours": our_repeats, "repeated_peer": peer_repeats,
    }


def target_checks(results: dict) -> dict[str, dict]:
    """Each performance target: measured, target, met, the margin, and the load of the phase
    that measured it (``noisy`` when the machine was busy: see ``noisy``)."""
    checks: dict[str, dict] = {}

    def check(name: str, measured: float | None, target: float, higher_is_better: bool,
              phase: dict | None) -> None:
        load = {"load": (phase or {}).get("load"),
                "noisy": bool(((phase or {}).get("load") or {}).get("noisy"))}
        if measured is None:
            checks[name] = {"measured": None, "target": target, "met": None, **load}
            return
        met = measured >= target if higher_is_better else measured <= target
        checks[name] = {"measured": measured, "target": target, "met": met,
                        "measured_over_target": round(measured / target, 3), **load}

    backlog = results["backlog"]
    check("backlog_steady_rows_per_s", backlog["steady_rows_per_s"]["median"],
          TARGET_BACKLOG_ROWS_PER_S, True, backlog)
    nominal = results["nominal"]
    check("latency_p50_s", nominal["latency_s"]["p50"], TARGET_P50_S, False, nominal)
    check("latency_p99_s", nominal["latency_s"]["p99"], TARGET_P99_S, False, nominal)
    check("cost_last10_vs_first10_after_warm_up", results["cost"]["total_ratio"],
          TARGET_COST_RATIO, False, nominal)
    memory = results["memory"]
    check("memory_peak_bytes", memory["peak_total_bytes"], TARGET_MEMORY_BYTES, False, memory)
    startup = results["startup"]
    # the steady state: starts whose key weights came from the cache, when there were any
    ready = startup.get("ready_s_cached") or {}
    check("startup_s", (ready if ready.get("n") else startup["ready_s"])["median"],
          TARGET_STARTUP_S, False, startup)
    recovery = results["recovery"]
    check("recovery_s", recovery.get("kill_to_in_flight_applied_s"), TARGET_RECOVERY_S, False,
          recovery)
    baseline = results["baseline"]
    # at the first pass's last chunk (60 on the full data set)
    check("baseline_factor", baseline.get("ratio_at_last_chunk"),
          TARGET_BASELINE_FACTOR, True, baseline)
    return checks
