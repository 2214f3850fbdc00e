"""What one turn of the loop did, as the ``batch done`` log line reports it (docs/worker.md)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime


@dataclass
class BatchSummary:
    """One line per loop in the log: what a dashboard needs."""

    chunks: int = 0
    duplicates: int = 0  # messages of chunks already done
    rejected_chunks: int = 0
    duplicate_numbers: int = 0  # of rejected_chunks: a number another chunk holds
    conflicts: int = 0  # versions of a chunk key not applied: overwritten, superseded
    poison: int = 0
    failures: int = 0
    dead_lettered: int = 0
    waiting: int = 0  # chunks held for a predecessor
    pulled: int = 0  # chunks found in S3 without their message in hand
    overlapped: int = 0  # chunks aggregated by the previous batch's overlapped Spark job
    rows_good: int = 0
    rows_rejected: int = 0
    detections: int = 0
    files_written: int = 0
    # Where the batch's time went, in stage order (ms); fetch_ms is part of spark_ms.
    received_at: str | None = None  # UTC, when the batch's messages were in hand
    dedup_ms: int = 0  # looking up chunks already done
    spark_ms: int = 0  # waiting for Spark: the overlapped job's rest, and this batch's own
    fetch_ms: int | None = None  # S3 GET + chunk checks on the executors, summed over tasks
    quarantine_ms: int = 0
    apply_ms: int = 0
    delete_ms: int = 0  # SQS deletes of the applied chunks' messages, after their commits
    publish_ms: int = 0  # closed outbox files written to S3
    batch_ms: int = 0  # received_at -> batch done
    lag_ms: int | None = None  # oldest S3 event in the batch -> last commit
    keys: list[str] = field(default_factory=list)


def ms_since(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)


@contextlib.contextmanager
def timed(summary: BatchSummary, stage: str) -> Iterator[None]:
    """Add the block's wall time to ``summary.<stage>`` (ms), even when the stage repeats."""
    started = time.perf_counter()
    try:
        yield
    finally:
        setattr(summary, stage, getattr(summary, stage) + ms_since(started))


def parse_event_time(value: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
