"""The chunks under the chunk prefix, as an S3 listing shows them: the one adapter the worker's
look-up of a missing predecessor, the backfill and the replay all use.

The client is passed in (``list_objects_v2`` and its paginator). A listing is read page by
page, so a caller that stops early asks S3 for no more pages, and one that goes through the
whole prefix holds one page at a time.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from chunk_contract.layout import CHUNK_SUFFIX, chunk_seq
from chunk_contract.message import ChunkMessage

MAX_PAGE_KEYS = 1000  # list_objects_v2's own limit


@dataclass(frozen=True)
class ListedChunk:
    key: str
    size: int
    etag: str  # without S3's quotes, as an event carries it
    last_modified: datetime  # UTC
    seq: int | None  # the producer's sequence number; None for a hand upload

    def message(self, bucket: str) -> ChunkMessage:
        """The chunk message its S3 event would have carried (the upload time as event time)."""
        return ChunkMessage(bucket=bucket, key=self.key, size=self.size, etag=self.etag,
                            event_time=self.last_modified.isoformat())


def _listed(obj: dict[str, Any], prefix: str) -> ListedChunk:
    return ListedChunk(key=obj["Key"], size=int(obj["Size"]), etag=obj["ETag"].strip('"'),
                       last_modified=obj["LastModified"].astimezone(UTC),
                       seq=chunk_seq(obj["Key"], prefix))


def chunk_pages(s3: Any, bucket: str, prefix: str, suffix: str = CHUNK_SUFFIX, *,
                start_after: str = "", within: str = "", page_size: int = MAX_PAGE_KEYS
                ) -> Iterator[list[ListedChunk]]:
    """The chunk objects under ``prefix`` in key order (the producer's in number order), one
    list per listing page, from the first key after ``start_after``; only those under
    ``prefix + within`` when that is given (``layout.seq_key_prefix(n)``: chunk n's keys). A
    chunk is a key ending in ``suffix``, empty objects included (the worker rejects those
    whole, visibly)."""
    arguments = {"Bucket": bucket, "Prefix": prefix + within,
                 "PaginationConfig": {"PageSize": min(page_size, MAX_PAGE_KEYS)}}
    if start_after:
        arguments["StartAfter"] = start_after
    for page in s3.get_paginator("list_objects_v2").paginate(**arguments):
        yield [_listed(obj, prefix) for obj in page.get("Contents", [])
               if obj["Key"].endswith(suffix)]


def list_chunks(s3: Any, bucket: str, prefix: str, suffix: str = CHUNK_SUFFIX, *,
                start_after: str = "", within: str = "", limit: int | None = None
                ) -> Iterator[ListedChunk]:
    """``chunk_pages`` one chunk at a time, stopping after ``limit`` chunks (pages of that
    size: a short look-up asks S3 for one small page)."""
    pages = chunk_pages(s3, bucket, prefix, suffix, start_after=start_after, within=within,
                        page_size=limit or MAX_PAGE_KEYS)
    chunks = itertools.chain.from_iterable(pages)
    return chunks if limit is None else itertools.islice(chunks, limit)
