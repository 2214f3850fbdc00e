"""Mechanism X: stream the master file to the bucket, one chunk per interval.

``run_stream`` is the whole loop with its edges passed in (store, S3 client for the source,
clock, sleep, stop flag, reporter), so tests drive it directly with moto or a local folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError

from chunk_contract.layout import chunk_key, chunk_seq, seq_key_prefix
from producer.chunks import (
    IMPORTANCE_COLUMNS,
    BadHeader,
    Chunk,
    check_header,
    iter_chunks,
    skip_rows,
)
from producer.config import ProducerSettings
from producer.lease import Lease, StreamLeased, new_owner, refusal
from producer.pacing import FixedRateSchedule
from producer.sources import OpenSource, SourceError, open_source
from producer.state import ProducerState, starting_position
from producer.store import ObjectStore, StoreError, WriteConflict

META_FINGERPRINT = "source-fingerprint"
META_FIRST_ROW = "first-row"
META_ROWS = "rows"
META_MD5 = "md5"


@dataclass(frozen=True)
class StreamOptions:
    source: str
    importance: str | None = None
    max_chunks: int | None = None
    from_start: bool = False
    # Times the file is sent: each pass after the first starts again at its top, with the
    # next sequence numbers, on the same schedule (a longer stream from one file, for benches).
    passes: int = 1
    take_over: bool = False  # take the stream although another producer's lease is valid


@dataclass(frozen=True)
class ChunkReport:
    key: str
    seq: int
    first_row: int
    rows: int
    size: int
    lag: float  # seconds behind the fixed-rate schedule when the chunk started
    upload_seconds: float
    chunks_sent: int
    rows_sent: int
    elapsed: float


@dataclass(frozen=True)
class StreamResult:
    chunks_sent: int
    rows_sent: int
    next_row: int
    next_seq: int
    stopped_by_signal: bool
    reference_uploaded: bool


@dataclass(frozen=True)
class PreparedImportance:
    path: Path
    md5: str
    size: int


def utc_now() -> datetime:
    return datetime.now(UTC)


def prepare_importance(uri: str, s3: Any, workdir: Path) -> PreparedImportance:
    """Check the CustomerImportance header and hash the file; remote files land in ``workdir``."""
    with open_source(uri, s3) as source:
        header = source.stream.readline()
        try:
            check_header(header, IMPORTANCE_COLUMNS)
        except BadHeader as exc:
            raise SourceError(uri, str(exc)) from exc
        digest = hashlib.md5(header, usedforsecurity=False)
        local = Path(uri.removeprefix("file://"))
        is_local = not uri.startswith(("s3://", "http://", "https://"))
        target = local if is_local else workdir / "CustomerImportance.csv"
        size = len(header)
        with ExitStack() as stack:
            copy = None if is_local else stack.enter_context(target.open("wb"))
            if copy:
                copy.write(header)
            try:
                for block in iter(lambda: source.stream.read(1 << 20), b""):
                    digest.update(block)
                    size += len(block)
                    if copy:
                        copy.write(block)
            except (OSError, http.client.HTTPException, BotoCoreError) as exc:
                raise SourceError(uri, f"read failed ({exc!r})") from exc
    return PreparedImportance(target, digest.hexdigest(), size)


def upload_reference(store: ObjectStore, key: str, importance: PreparedImportance) -> bool:
    """Upload CustomerImportance unless an identical object is already there."""
    existing = store.head(key)
    if existing is not None and existing.size == importance.size and (
        existing.metadata.get(META_MD5) == importance.md5 or existing.etag == importance.md5
    ):
        return False
    store.upload_file(key, importance.path, {META_MD5: importance.md5})
    return True


def load_state(store: ObjectStore, key: str,
               from_start: bool) -> tuple[ProducerState | None, str | None]:
    """The saved state, and the ETag of the object it was read from (None: there is none)."""
    found = store.get_versioned(key)
    if found is None:
        return None, None
    body, etag = found
    try:
        return ProducerState.from_json(body), etag
    except ValueError:
        if from_start:
            return None, etag  # starting over anyway; the broken state gets overwritten
        raise


def reconcile_with_store(
    store: ObjectStore, prefix: str, fingerprint: str, next_row: int, next_seq: int
) -> tuple[int, int]:
    """Account for chunks uploaded after the last state write (a crash between the two).

    Such a chunk carries its source fingerprint and first row in its metadata; if it is the
    one we are about to send, we move past it instead of sending its rows again.
    """
    while True:
        keys = [k for k in store.keys(prefix + seq_key_prefix(next_seq))
                if chunk_seq(k, prefix) == next_seq]
        if not keys:
            return next_row, next_seq
        stored = store.head(keys[0])
        meta = stored.metadata if stored else {}
        if meta.get(META_FINGERPRINT) == fingerprint and meta.get(META_FIRST_ROW) == str(next_row):
            next_row += int(meta.get(META_ROWS, "0"))
        next_seq += 1


def _last_seq(store: ObjectStore, prefix: str) -> int:
    seqs = [chunk_seq(key, prefix) for key in store.keys(prefix)]
    return max((s for s in seqs if s is not None), default=0)


def _guarded(chunks: Iterator[Chunk], source: str) -> Iterator[Chunk]:
    """Turn a read failure in the middle of the file into a ``SourceError`` for that source."""
    try:
        yield from chunks
    except (OSError, http.client.HTTPException, BotoCoreError) as exc:
        raise SourceError(source, f"read failed ({exc!r})") from exc


def _pass_from_top(uri: str, s3: Any, rows_per_chunk: int, first_seq: int) -> Iterator[Chunk]:
    """The file again from its first row, numbered from ``first_seq`` (the next pass)."""
    with open_source(uri, s3) as again:
        lines = again.lines()
        try:
            header = check_header(next(lines, b""))
        except BadHeader as exc:
            raise SourceError(uri, str(exc)) from exc
        yield from _guarded(iter_chunks(header, lines, rows_per_chunk, first_seq, 0), uri)


def _passes(first: Iterator[Chunk], next_pass: Callable[[int], Iterator[Chunk]], passes: int,
            next_seq: int) -> Generator[Chunk, None, None]:
    """The first (possibly resumed) pass, then ``passes - 1`` passes from the top; sequence
    numbers keep increasing across passes."""
    for chunk in first:
        next_seq = chunk.seq + 1
        yield chunk
    for _ in range(passes - 1):
        for chunk in next_pass(next_seq):
            next_seq = chunk.seq + 1
            yield chunk


def run_stream(
    settings: ProducerSettings,
    options: StreamOptions,
    store: ObjectStore,
    s3: Any = None,
    *,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] | None = None,
    now: Callable[[], datetime] = utc_now,
    report: Callable[[ChunkReport], None] = lambda _: None,
    on_start: Callable[[int, int], None] = lambda next_row, next_seq: None,
) -> StreamResult:
    if options.passes < 1:
        raise ValueError(f"passes must be >= 1, got {options.passes}")
    stop = stop or threading.Event()
    with ExitStack() as stack:
        source: OpenSource = stack.enter_context(open_source(options.source, s3))
        lines = source.lines()
        try:
            header = check_header(next(lines))
        except BadHeader as exc:
            raise SourceError(options.source, str(exc)) from exc

        importance = None
        if options.importance:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="producer-")))
            importance = prepare_importance(options.importance, s3, workdir)

        saved, state_etag = load_state(store, settings.state_key, options.from_start)
        held_by = refusal(saved, now(), options.take_over)
        if held_by is not None:
            raise StreamLeased(f"another producer holds the stream"
                               f" {store.location}{settings.chunk_prefix}: {held_by}")
        next_row, next_seq = starting_position(
            saved, source.fingerprint, options.from_start, _last_seq(store, settings.chunk_prefix)
        )
        next_row, next_seq = reconcile_with_store(
            store, settings.chunk_prefix, source.fingerprint, next_row, next_seq
        )
        skipped = skip_rows(lines, next_row)
        if skipped < next_row:
            raise SourceError(
                options.source, f"has {skipped} rows but the saved position is row {next_row}"
            )
        chunks = _passes(
            _guarded(iter_chunks(header, lines, settings.rows_per_chunk, next_seq, next_row),
                     options.source),
            lambda seq: _pass_from_top(options.source, s3, settings.rows_per_chunk, seq),
            options.passes, next_seq,
        )
        stack.callback(chunks.close)  # a pass stopped early closes its source now
        pending = next(chunks, None)
        if pending is None and next_row == 0:
            raise SourceError(options.source, "has a header but no data rows")

        # Nothing has been written so far: every input has been checked first.
        lease = Lease(store, settings.state_key, etag=state_etag, owner=new_owner(),
                      seconds=settings.lease_seconds, interval=settings.interval, now=now)
        state = ProducerState(source.fingerprint, next_row, next_seq, options.source,
                              now().isoformat())
        lease.take(state)
        stack.callback(lambda: _let_go(lease, state))
        on_start(next_row, next_seq)
        reference_uploaded = False
        if importance is not None:
            reference_uploaded = upload_reference(store, settings.reference_key, importance)

        schedule = FixedRateSchedule(settings.interval, clock, sleep or stop.wait)
        started = clock()
        sent = rows_sent = 0
        while pending is not None and not stop.is_set():
            timing = schedule.wait_for_next_slot()
            if stop.is_set():
                break
            chunk = pending
            key = chunk_key(settings.chunk_prefix, chunk.seq, now())
            put_started = clock()
            store.put(
                key,
                chunk.body,
                {
                    META_FINGERPRINT: source.fingerprint,
                    META_FIRST_ROW: str(chunk.first_row),
                    META_ROWS: str(chunk.rows),
                },
            )
            next_row, next_seq = chunk.first_row + chunk.rows, chunk.seq + 1
            state = ProducerState(
                source.fingerprint, next_row, next_seq, options.source, now().isoformat()
            )
            lease.renew(state)
            sent += 1
            rows_sent += chunk.rows
            finished = clock()
            report(
                ChunkReport(
                    key=key,
                    seq=chunk.seq,
                    first_row=chunk.first_row,
                    rows=chunk.rows,
                    size=len(chunk.body),
                    lag=timing.lag,
                    upload_seconds=finished - put_started,
                    chunks_sent=sent,
                    rows_sent=rows_sent,
                    elapsed=finished - started,
                )
            )
            if options.max_chunks is not None and sent >= options.max_chunks:
                break
            pending = next(chunks, None)
    return StreamResult(sent, rows_sent, next_row, next_seq, stop.is_set(), reference_uploaded)


def _let_go(lease: Lease, state: ProducerState) -> None:
    """Release the lease at the end, whatever ended the stream. A failing store (the very
    error that ended it, often) leaves it held: it expires, or ``--take-over`` takes it."""
    with contextlib.suppress(StoreError, WriteConflict):
        lease.release(state)


