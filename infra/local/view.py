"""The demo's live view and final summary: pure rendering of snapshots, plus their collection.

``collect_snapshot`` reads the S3 listing, the SQS queue attributes and PostgreSQL; ``render``
and ``render_summary`` turn what was read into text, so tests can check them with values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg2

from chunk_contract import layout

PATTERNS = ("PatId1", "PatId2", "PatId3")


@dataclass(frozen=True)
class Snapshot:
    elapsed_s: float
    chunks_produced: int  # objects under the chunk prefix
    events_pending: int  # S3 events the Lambda runner has not handled yet
    trigger_failures: int  # events parked in the trigger's on-failure queue
    chunks_queued: int  # chunk messages waiting or in flight
    chunks_dead: int  # chunk messages in the DLQ
    chunks_applied: int
    chunks_rejected: int
    rows_good: int
    rows_rejected: int
    detections: dict[str, int] = field(default_factory=dict)
    detection_files: int = 0  # objects under the detections prefix
    last_latency_s: float | None = None  # S3 event -> applied, newest chunk

    @property
    def chunks_done(self) -> int:
        return self.chunks_applied + self.chunks_rejected

    @property
    def chunks_enqueued(self) -> int:
        """Chunks the trigger has put on the queue (done, waiting, in flight or dead)."""
        return self.chunks_done + self.chunks_queued + self.chunks_dead

    @property
    def rows_done(self) -> int:
        return self.rows_good + self.rows_rejected


def rows_per_second(history: Sequence[Snapshot], window_s: float = 5.0) -> float:
    """Rows applied per second over the last ``window_s`` seconds of snapshots."""
    if len(history) < 2:
        return 0.0
    newest = history[-1]
    oldest = next((s for s in history if newest.elapsed_s - s.elapsed_s <= window_s),
                  history[-2])
    span = newest.elapsed_s - oldest.elapsed_s
    return (newest.rows_done - oldest.rows_done) / span if span > 0 else 0.0


def is_settled(snapshot: Snapshot, producer_finished: bool) -> bool:
    """Everything produced has been triggered, queued and applied (or rejected)."""
    return (producer_finished and snapshot.chunks_produced > 0
            and snapshot.events_pending == 0 and snapshot.chunks_queued == 0
            and snapshot.chunks_done + snapshot.chunks_dead + snapshot.trigger_failures
            >= snapshot.chunks_produced)


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = 0 if total <= 0 else min(width, round(width * done / total))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def render(history: Sequence[Snapshot], *, chunks_expected: int | None,
           producer_state: str) -> str:
    s = history[-1]
    expected = chunks_expected or max(s.chunks_produced, 1)
    latency = "-" if s.last_latency_s is None else f"{s.last_latency_s:.2f} s"
    detections = "  ".join(f"{p} {s.detections.get(p, 0):>5,}" for p in PATTERNS)
    lines = [
        f"transaction pattern pipeline - local demo          {s.elapsed_s:7.1f} s elapsed",
        "",
        f"  produced   {s.chunks_produced:>6,} chunks  {_bar(s.chunks_produced, expected)}"
        f"  producer {producer_state}",
        f"  enqueued   {s.chunks_enqueued:>6,} chunks  (S3 events waiting for the trigger:"
        f" {s.events_pending})",
        f"  applied    {s.chunks_applied:>6,} chunks  {_bar(s.chunks_done, expected)}"
        f"  rejected {s.chunks_rejected}",
        f"  rows       {s.rows_done:>10,}  ({rows_per_second(history):,.0f} rows/s,"
        f" {s.rows_rejected:,} rejected)",
        f"  lag        {s.chunks_produced - s.chunks_done:>6,} chunks behind,"
        f" newest chunk S3 -> applied {latency}",
        f"  detections {detections}",
        f"  files      {s.detection_files:>6,} detection files written to S3",
    ]
    if s.chunks_dead or s.trigger_failures:
        lines.append(f"  ATTENTION  {s.chunks_dead} chunk message(s) in the DLQ,"
                     f" {s.trigger_failures} S3 event(s) the trigger gave up on")
    lines += ["", "  Ctrl-C stops the producer, drains the worker and prints a summary."]
    return "\n".join(lines)


@dataclass(frozen=True)
class Summary:
    elapsed_s: float
    completed: bool  # False when interrupted
    snapshot: Snapshot
    latency_p50_s: float | None
    latency_p99_s: float | None
    detection_keys: tuple[str, ...]
    quarantine_keys: int
    output_dir: str  # local copy of the detection files
    bucket: str
    database_url: str
    psql: str
    logs: str
    embedded_postgres: bool = True


def render_summary(summary: Summary) -> str:
    s = summary.snapshot

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f} s"

    rate = s.rows_done / summary.elapsed_s if summary.elapsed_s > 0 else 0.0
    files = summary.detection_keys
    shown = ", ".join(files[:3]) + (f", ... ({len(files)} files)" if len(files) > 3 else "")
    lines = [
        "",
        "=" * 78,
        ("finished: the whole file was streamed and the queue drained" if summary.completed
         else "stopped early (Ctrl-C): what was produced so far was drained"),
        f"  chunks       {s.chunks_applied:,} applied, {s.chunks_rejected:,} rejected,"
        f" {s.chunks_dead} in the DLQ",
        f"  rows         {s.rows_good:,} good, {s.rows_rejected:,} rejected"
        f" ({rate:,.0f} rows/s over {summary.elapsed_s:.1f} s)",
        "  detections   " + ", ".join(f"{p} {s.detections.get(p, 0):,}" for p in PATTERNS)
        + f" (total {sum(s.detections.values()):,})",
        f"  latency      S3 put -> chunk applied: p50 {seconds(summary.latency_p50_s)},"
        f" p99 {seconds(summary.latency_p99_s)}",
        "",
        "outputs",
        f"  S3           s3://{summary.bucket}/detected_patterns/: {shown or 'no files'}",
        f"               copied to {summary.output_dir}",
        f"  quarantine   {summary.quarantine_keys} object(s) under s3://{summary.bucket}"
        "/quarantine/",
        f"  PostgreSQL   {summary.database_url}",
        f"               {summary.psql} -c 'SELECT pattern_id, count(*) FROM"
        " detected_patterns GROUP BY 1'",
    ]
    if summary.embedded_postgres:
        lines.append("               (the embedded server stops with the demo; run `make up` to"
                     " start it again, then this command works)")
    lines.append(f"  logs         {summary.logs}")
    return "\n".join(lines)


def _count_keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def _depth(sqs: Any, url: str) -> int:
    attrs = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                        "ApproximateNumberOfMessagesDelayed"])["Attributes"]
    return sum(int(v) for v in attrs.values())


DATABASE_COUNTS = """
SELECT (SELECT count(*) FROM processed_chunks),
       (SELECT count(*) FROM rejected_chunks),
       (SELECT coalesce(sum(rows_good), 0) FROM processed_chunks),
       (SELECT coalesce(sum(rows_rejected), 0) FROM processed_chunks),
       (SELECT extract(epoch FROM applied_at - event_time) FROM processed_chunks
         WHERE event_time IS NOT NULL ORDER BY apply_order DESC LIMIT 1)
"""


def database_counts(conn: Any) -> tuple[int, int, int, int, float | None, dict[str, int]]:
    """Counts from PostgreSQL; zeros until the worker has created its tables."""
    try:
        with conn.cursor() as cur:
            cur.execute(DATABASE_COUNTS)
            applied, rejected, good, bad, latency = cur.fetchone()
            cur.execute("SELECT pattern_id, count(*) FROM detected_patterns GROUP BY 1")
            detections = dict(cur.fetchall())
    except psycopg2.errors.UndefinedTable:
        conn.rollback()
        return 0, 0, 0, 0, None, {}
    conn.rollback()  # end the read-only transaction: the next look sees new commits
    return (applied, rejected, int(good), int(bad),
            None if latency is None else float(latency), detections)


def collect_snapshot(stack: Any, s3: Any, sqs: Any, conn: Any, elapsed_s: float) -> Snapshot:
    applied, rejected, good, bad, latency, detections = database_counts(conn)
    resources = stack.resources
    return Snapshot(
        elapsed_s=elapsed_s,
        chunks_produced=len(_count_keys(s3, stack.bucket, stack.spec.chunk_prefix)),
        events_pending=_depth(sqs, resources.events_queue_url),
        trigger_failures=_depth(sqs, resources.trigger_failures_queue_url),
        chunks_queued=_depth(sqs, resources.queue_url),
        chunks_dead=_depth(sqs, resources.dlq_url),
        chunks_applied=applied, chunks_rejected=rejected, rows_good=good, rows_rejected=bad,
        detections=detections,
        detection_files=len(_count_keys(s3, stack.bucket, layout.DETECTIONS_PREFIX)),
        last_latency_s=latency,
    )


LATENCY = """
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM applied_at - event_time)),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM applied_at - event_time))
  FROM processed_chunks WHERE event_time IS NOT NULL
"""


def latency_percentiles(conn: Any) -> tuple[float | None, float | None]:
    try:
        with conn.cursor() as cur:
            cur.execute(LATENCY)
            p50, p99 = cur.fetchone()
    except psycopg2.errors.UndefinedTable:
        p50 = p99 = None
    conn.rollback()
    return (None if p50 is None else float(p50), None if p99 is None else float(p99))
