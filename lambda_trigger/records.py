"""Which S3 event records are chunks, and the chunk message each one becomes (pure functions)."""

from __future__ import annotations

from urllib.parse import unquote_plus

from aws_lambda_powertools.utilities.data_classes.s3_event import S3EventRecord

from chunk_contract.message import ChunkMessage
from lambda_trigger.config import TriggerSettings

OBJECT_CREATED = "ObjectCreated:"


def object_key(record: S3EventRecord) -> str:
    """The object key as stored: S3 sends it form-encoded (space as '+', UTF-8 %-escapes)."""
    return unquote_plus(record.s3.get_object.key)


def object_size(record: S3EventRecord) -> int:
    # ObjectRemoved and a few other event types carry no size.
    return int(record.s3.get_object.get("size") or 0)


def skip_reason(record: S3EventRecord, settings: TriggerSettings) -> str | None:
    """Why this record must not be enqueued, or None when it is a chunk to process."""
    if not record.event_name.startswith(OBJECT_CREATED):
        return "not_object_created"
    if record.s3.bucket.name != settings.bucket:
        return "other_bucket"
    key = object_key(record)
    if key.endswith("/"):
        return "folder"
    if not key.startswith(settings.chunk_prefix):
        return "outside_chunk_prefix"
    if not key.endswith(settings.chunk_suffix):
        return "not_chunk_suffix"
    # An empty chunk is enqueued like any other: the worker rejects it whole, records it and
    # quarantines it (docs/detection-semantics.md, "Bad input"), so it is visible rather than
    # silently skipped here.
    return None


def chunk_message(record: S3EventRecord) -> ChunkMessage:
    obj = record.s3.get_object
    return ChunkMessage(
        bucket=record.s3.bucket.name,
        key=object_key(record),
        size=object_size(record),
        etag=obj.etag,
        sequencer=obj.get("sequencer") or "",
        event_time=record.event_time,
    )
