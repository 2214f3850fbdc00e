"""`python -m spark_detector status`: one look at the whole pipeline's health."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime


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


def dlq_url(sqs, queue_url: str) -> str | None:
    """The DLQ behind a queue, from its redrive policy."""
    attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])
    policy = attrs.get("Attributes", {}).get("RedrivePolicy")
    if not policy:
        return None
    arn = json.loads(policy)["deadLetterTargetArn"]
    account, name = arn.split(":")[4], arn.split(":")[5]
    return sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"]


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
    conn.rollback()
    return PipelineStatus(
        queue_visible=visible, queue_in_flight=in_flight, dlq_depth=dlq,
        chunks_applied=applied, chunks_rejected=rejected, rows_good=int(rows_good),
        rows_rejected=int(rows_rejected),
        detections={p: detections.get(p, 0) for p in ("PatId1", "PatId2", "PatId3")},
        outbox_files_pending=pending, detections_unfiled=unfiled,
        newest_applied_age_s=None if newest is None else (now - newest).total_seconds(),
    )


def format_status(status: PipelineStatus, *, as_json: bool = False) -> str:
    if as_json:
        return json.dumps(asdict(status), indent=2, sort_keys=True)
    age = status.newest_applied_age_s
    lines = [
        f"queue:      {status.queue_visible} waiting, {status.queue_in_flight} in flight",
        f"dlq:        {'n/a' if status.dlq_depth is None else status.dlq_depth}",
        f"chunks:     {status.chunks_applied} applied, {status.chunks_rejected} rejected",
        f"rows:       {status.rows_good:,} good, {status.rows_rejected:,} rejected",
        "detections: " + ", ".join(f"{p} {n}" for p, n in status.detections.items()),
        f"outbox:     {status.outbox_files_pending} file(s) pending, "
        f"{status.detections_unfiled} detection(s) not yet in a file",
        f"newest applied chunk: {'none' if age is None else f'{age:.1f} s ago'}",
    ]
    return "\n".join(lines)
