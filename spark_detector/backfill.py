"""Find chunks whose S3 event never reached the queue and enqueue them.

S3 notifications are at-least-once and, rarely, lost. Listing the chunk prefix and
enqueueing every chunk that is neither applied nor rejected closes that gap; a chunk that is
merely in flight gets a second message, which the worker recognises as a duplicate.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from chunk_contract.message import ChunkMessage
from chunk_contract.sqs_batch import enqueue
from spark_detector import detection_state
from spark_detector.failures import failures_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ListedChunk:
    key: str
    size: int
    etag: str
    last_modified: str  # ISO-8601 UTC


def list_chunks(s3, bucket: str, prefix: str, suffix: str) -> Iterator[ListedChunk]:
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            # empty chunks too: the worker rejects them whole, visibly
            if obj["Key"].endswith(suffix):
                yield ListedChunk(obj["Key"], obj["Size"], obj["ETag"].strip('"'),
                                  obj["LastModified"].isoformat())


def missing_messages(bucket: str, listed: Iterable[ListedChunk],
                     done: set[str]) -> list[ChunkMessage]:
    """Messages for the listed chunks that are not done, in key order."""
    return [
        ChunkMessage(bucket=bucket, key=c.key, size=c.size, etag=c.etag,
                     event_time=c.last_modified)
        for c in sorted(listed, key=lambda c: c.key) if c.key not in done
    ]


def backfill(conn, s3, sqs, settings) -> list[str]:
    """Enqueue every chunk under the prefix that is neither applied, rejected nor
    dead-lettered (a dead-lettered chunk comes back by a DLQ redrive, a deliberate act)."""
    listed = list(list_chunks(s3, settings.bucket, settings.chunk_prefix, settings.chunk_suffix))
    keys = [c.key for c in listed]
    dead = {k for k, f in failures_of(conn, keys).items() if f.dead_lettered_at is not None}
    done = detection_state.done_chunk_keys(conn, keys) | dead
    messages = missing_messages(settings.bucket, listed, done)
    enqueue(sqs, settings.queue_url, messages, fifo=settings.queue_url.endswith(".fifo"))
    logger.info("backfill", extra={"listed": len(listed), "done": len(done),
                                   "enqueued": len(messages)})
    return [m.key for m in messages]
