"""`python -m spark_detector status`: one look at the whole pipeline's health."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from chunk_contract.sqs_batch import dlq_url
from spark_detector.db import rebuild_in_progress
from spark_detector.engine.conflicts import OVERWRITTEN, recent_conflicts
from spark_detector.engine.failures import failing_chunks


@dataclass(frozen=True)
class PipelineStatus:
    queue_visible: int | None
    queue_in_flight: int | None
    dlq_depth: int | None
    chunks_applied: int
    chunks_rejected: int
    rows_good: int
    rows_rejected: int
    detections: dict[str, int]
    outbox_files_pending: int
    detections_unfiled: int
    newest_applied_age_s: float | None
    # production order: the chunk the stream waits for, and since when something waits on it
    next_seq: int = 1
    waiting_since: str | None = None
    waiting_s: float | None = None
    skipped_seqs: list[dict] = field(default_factory=list)
    failing_chunks: list[dict] = field(default_factory=list)  # not yet dead-lettered
    dead_lettered_chunks: int = 0
    # an unfinished `replay --replace`: workers refuse to start until it is run again
    rebuild_in_progress: dict | None = None
    # chunks rejected whole because another chunk holds their sequence number
    duplicate_chunks: int = 0
    duplicates: list[dict] = field(default_factory=list)
    # versions of chunk keys not applied (chunk_conflicts): overwritten, superseded
    conflicts_total: int = 0
    conflicts: list[dict] = field(default_factory=list)


def queue_depth(sqs, url: str) -> tuple[int, int]:
    attrs = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(
        attrs["ApproximateNumberOfMessagesNotVisible"])


def collect_status(conn, sqs, settings, now: datetime | None = None) -> PipelineStatus:
    now = now or datetime.now(UTC)
    visible, in_flight = queue_depth(sqs, settings.queue_url)
    dead = settings.dlq_url or dlq_url(sqs, settings.queue_url)
    dlq = queue_depth(sqs, dead)[0] if dead else None
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*), coalesce(sum(rows_good), 0), coalesce(sum(rows_rejected), 0),"
            " max(applied_at) FROM processed_chunks")
        applied, rows_good, rows_rejected, newest = cur.fetchone()
        cur.execute("SELECT count(*) FROM rejected_chunks")
        (rejected,) = cur.fetchone()
        cur.execute(
            "SELECT pattern_id, count(*) FROM detected_patterns GROUP BY pattern_id"
            " ORDER BY pattern_id")
        detections = dict(cur.fetchall())
        cur.execute("SELECT count(*) FROM outbox_files WHERE written_at IS NULL")
        (pending,) = cur.fetchone()
        cur.execute("SELECT count(*) FROM detected_patterns WHERE file_no IS NULL")
        (unfiled,) = cur.fetchone()
        cur.execute("SELECT next_seq, waiting_since FROM stream_position")
        next_seq, waiting_since = cur.fetchone() or (1, None)
        cur.execute("SELECT seq, reason, decided_by, marked_at, late_outcome, late_chunk_key"
                    " FROM sequence_marks WHERE outcome = 'skipped' ORDER BY seq DESC LIMIT 20")
        skipped = [{"seq": q, "reason": r, "by": b, "at": a.isoformat(), "late": lo,
                    "late_chunk_key": lk}
                   for q, r, b, a, lo, lk in cur.fetchall()]
        cur.execute("SELECT count(*) FROM chunk_failures WHERE dead_lettered_at IS NOT NULL")
        (dead,) = cur.fetchone()
        cur.execute("SELECT chunk_key, seq, duplicate_of, rejected_at FROM rejected_chunks"
                    " WHERE duplicate_of IS NOT NULL ORDER BY rejected_at DESC")
        duplicates = [{"chunk_key": k, "seq": q, "holder": h, "at": a.isoformat()}
                      for k, q, h, a in cur.fetchall()]
        cur.execute("SELECT count(*) FROM chunk_conflicts")
        (conflicts_total,) = cur.fetchone()
    conn.rollback()
    rebuild = rebuild_in_progress(conn)
    failing = [{"chunk_key": f.chunk_key, "attempts": f.attempts, "last_error": f.last_error,
                "last_failed_at": f.last_failed_at.isoformat()}
               for f in failing_chunks(conn)]
    return PipelineStatus(
        queue_visible=visible, queue_in_flight=in_flight, dlq_depth=dlq,
        chunks_applied=applied, chunks_rejected=rejected, rows_good=int(rows_good),
        rows_rejected=int(rows_rejected),
        detections={p: detections.get(p, 0) for p in ("PatId1", "PatId2", "PatId3")},
        outbox_files_pending=pending, detections_unfiled=unfiled,
        newest_applied_age_s=None if newest is None else (now - newest).total_seconds(),
        next_seq=next_seq,
        waiting_since=None if waiting_since is None else waiting_since.isoformat(),
        waiting_s=None if waiting_since is None else (now - waiting_since).total_seconds(),
        skipped_seqs=skipped, failing_chunks=failing, dead_lettered_chunks=dead,
        rebuild_in_progress=None if rebuild is None else {
            "started_at": rebuild.started_at.isoformat(), "started_by": rebuild.started_by,
            "order": rebuild.replay_order, "runs": rebuild.runs,
            "what_to_do": rebuild.describe()},
        duplicate_chunks=len(duplicates), duplicates=duplicates[:20],
        conflicts_total=conflicts_total,
        conflicts=[{"chunk_key": c.chunk_key, "etag": c.etag, "kind": c.kind,
                    "settled_etag": c.settled_etag, "seen": c.seen,
                    "last_seen_at": c.last_seen_at.isoformat()}
                   for c in recent_conflicts(conn)],
    )


def format_status(status: PipelineStatus, *, as_json: bool = False) -> str:
    if as_json:
        return json.dumps(asdict(status), indent=2, sort_keys=True)
    age = status.newest_applied_age_s
    lines = [] if status.rebuild_in_progress is None else [
        f"REBUILD IN PROGRESS: {status.rebuild_in_progress['what_to_do']};"
        " workers refuse to start until then"]
    lines += [
        f"queue:      {status.queue_visible} waiting, {status.queue_in_flight} in flight",
        f"dlq:        {'n/a' if status.dlq_depth is None else status.dlq_depth}",
        f"chunks:     {status.chunks_applied} applied, {status.chunks_rejected} rejected",
        f"rows:       {status.rows_good:,} good, {status.rows_rejected:,} rejected",
        "detections: " + ", ".join(f"{p} {n}" for p, n in status.detections.items()),
        f"outbox:     {status.outbox_files_pending} file(s) pending, "
        f"{status.detections_unfiled} detection(s) not yet in a file",
        f"newest applied chunk: {'none' if age is None else f'{age:.1f} s ago'}",
        f"order:      next chunk {status.next_seq}"
        + ("" if status.waiting_s is None else
           f"; chunks wait for it since {status.waiting_since} ({status.waiting_s:.0f} s)"),
        f"failing:    {len(status.failing_chunks)} chunk(s) retrying, "
        f"{status.dead_lettered_chunks} moved to the DLQ by the worker",
    ]
    lines += [f"  {f['chunk_key']}: {f['attempts']} failure(s), last: {f['last_error']}"
              for f in status.failing_chunks]
    lines += [f"skipped:    chunk {s['seq']} by {s['by']} at {s['at']}: {s['reason']}"
              + (f" (its chunk came late: {s['late']}, {s['late_chunk_key']})" if s["late"]
                 else "")
              for s in status.skipped_seqs]
    if status.duplicate_chunks:
        lines.append(f"duplicates: {status.duplicate_chunks} chunk(s) rejected whole: another"
                     " chunk holds their sequence number")
        lines += [f"  {d['chunk_key']} duplicates chunk {d['seq']} ({d['holder']})"
                  for d in status.duplicates]
    if status.conflicts_total:
        lines.append(f"conflicts:  {status.conflicts_total} version(s) of chunk keys not"
                     " applied")
        lines += [f"  {c['chunk_key']}: " + (
            f"uploaded again with other content (ETag {c['etag']}; the version settled is"
            f" {c['settled_etag']})" if c["kind"] == OVERWRITTEN else
            f"version {c['etag']} was overwritten before it was read (the current one is"
            " applied)") + f", seen {c['seen']} time(s)"
                  for c in status.conflicts]
    return "\n".join(lines)
