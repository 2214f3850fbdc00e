"""Find chunks whose S3 event never reached the queue and enqueue them.

S3 notifications are at-least-once and, rarely, lost. Listing the chunk prefix and
enqueueing every chunk that is neither applied, rejected nor dead-lettered closes that gap;
a chunk that is merely in flight gets a second message, which the worker recognises as a
duplicate.

The listing starts at the chunk the stream waits for (``stream_position.next_seq``): every
producer chunk before it is settled, so the cost follows what is new, not how much the
archive keeps. What sorts before that point and is not the producer's - a hand upload whose
event was lost - is found by ``full=True`` (`backfill --full`), which lists the whole prefix.
Either way the listing is handled a page (1,000 keys) at a time.
"""

from __future__ import annotations

import logging

from chunk_contract.layout import start_after_seq
from chunk_contract.listing import chunk_pages
from chunk_contract.sqs_batch import enqueue
from spark_detector.engine import state as detection_state
from spark_detector.engine.failures import failures_of

logger = logging.getLogger(__name__)


def backfill(conn, s3, sqs, settings, *, full: bool = False) -> list[str]:
    """Enqueue every listed chunk that is neither applied, rejected nor dead-lettered (a
    dead-lettered chunk comes back by a DLQ redrive, a deliberate act); the keys enqueued,
    in key order."""
    start_after = "" if full else start_after_seq(settings.chunk_prefix,
                                                  detection_state.next_seq(conn))
    enqueued: list[str] = []
    listed = 0
    for page in chunk_pages(s3, settings.bucket, settings.chunk_prefix, settings.chunk_suffix,
                            start_after=start_after):
        keys = [c.key for c in page]
        dead = {k for k, f in failures_of(conn, keys).items() if f.dead_lettered_at is not None}
        done = detection_state.done_chunk_keys(conn, keys) | dead
        messages = [c.message(settings.bucket) for c in page if c.key not in done]
        enqueue(sqs, settings.queue_url, messages, fifo=settings.queue_url.endswith(".fifo"))
        listed += len(page)
        enqueued += [m.key for m in messages]
    logger.info("backfill", extra={"listed": listed, "enqueued": len(enqueued),
                                   "start_after": start_after or None})
    return enqueued
