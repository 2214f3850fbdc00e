"""Production order in PostgreSQL: the stream's position (``stream_position``), each sequence
number's settlement (``sequence_marks``: applied, rejected, skipped, dead-lettered, and a late
chunk beside its number's first settlement) and ``skip_seq``, the operator's decision that a
number will never come (docs/detection-semantics.md).

Every write takes the engine's transaction-level advisory lock first (``lock``), the lock
``state.apply_chunk`` holds: a number is settled once, in one order, whatever the workers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime

import psycopg2.extensions

from spark_detector.db import ENGINE_LOCK, LOCK_NAMESPACE, transaction
from spark_detector.engine.ordering import (
    ChunkRef,
    DuplicateNumber,
    OutOfTurn,
    Turn,
    number_holder,
    turn_of,
)

log = logging.getLogger(__name__)


def lock(cur: psycopg2.extensions.cursor) -> None:
    cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_NAMESPACE, ENGINE_LOCK))


def is_done(cur: psycopg2.extensions.cursor, key: str) -> bool:
    cur.execute("SELECT 1 FROM processed_chunks WHERE chunk_key = %(key)s"
                " UNION ALL SELECT 1 FROM rejected_chunks WHERE chunk_key = %(key)s",
                {"key": key})
    return cur.fetchone() is not None


_SETTLE_SQL = """
INSERT INTO sequence_marks AS m (seq, outcome, chunk_key, reason, decided_by)
VALUES (%(seq)s, %(outcome)s, %(key)s, %(reason)s, %(by)s)
ON CONFLICT (seq) DO UPDATE SET
    late_outcome = excluded.outcome, late_chunk_key = excluded.chunk_key,
    late_marked_at = clock_timestamp();
UPDATE stream_position
SET next_seq = (
        SELECT min(m.seq + 1) FROM sequence_marks m
        WHERE m.seq >= %(seq)s
          AND NOT EXISTS (SELECT 1 FROM sequence_marks n WHERE n.seq = m.seq + 1)),
    waiting_since = NULL,
    updated_at = clock_timestamp()
WHERE next_seq = %(seq)s;
"""


def settle_mark(cur: psycopg2.extensions.cursor, seq: int, outcome: str, key: str | None,
            reason: str | None = None, by: str | None = None) -> None:
    """Inside a transaction holding the engine lock."""
    cur.execute(_SETTLE_SQL, {"seq": seq, "outcome": outcome, "key": key, "reason": reason,
                              "by": by})


def stream_next_seq(cur: psycopg2.extensions.cursor) -> int:
    cur.execute("SELECT next_seq FROM stream_position")
    row = cur.fetchone()
    return 1 if row is None else row[0]


_MARKS_SQL = ("SELECT seq, outcome, chunk_key, late_chunk_key FROM sequence_marks"
              " WHERE seq = ANY(%s)")


def number_holder_of(cur: psycopg2.extensions.cursor, chunk: ChunkRef) -> str | None:
    """The chunk that holds ``chunk``'s number, when it is another one (``number_holder``)."""
    cur.execute(_MARKS_SQL, ([chunk.seq],))
    row = cur.fetchone()
    return None if row is None else number_holder(chunk.key, *row[1:])


def number_holders(conn: psycopg2.extensions.connection,
                   chunks: Mapping[str, int]) -> dict[str, str]:
    """Of ``chunks`` (key -> sequence number), those whose number another chunk holds, with
    that chunk: duplicates, to be rejected whole (one query)."""
    if not chunks:
        return {}
    with transaction(conn), conn.cursor() as cur:
        cur.execute(_MARKS_SQL, (sorted(set(chunks.values())),))
        marks = {seq: mark for seq, *mark in cur.fetchall()}
    holders = {key: number_holder(key, *marks[seq]) for key, seq in chunks.items()
               if seq in marks}
    return {key: holder for key, holder in holders.items() if holder is not None}


def claim_turn(cur: psycopg2.extensions.cursor, chunk: ChunkRef) -> Turn:
    """The chunk's turn; ``DuplicateNumber`` when its number is another chunk's,
    ``OutOfTurn`` when a predecessor is not settled yet."""
    if chunk.seq is not None:
        holder = number_holder_of(cur, chunk)
        if holder is not None:
            raise DuplicateNumber(chunk.key, chunk.seq, holder)
    waiting_for = stream_next_seq(cur)
    turn = turn_of(chunk.seq, waiting_for)
    if turn is Turn.EARLY:
        raise OutOfTurn(chunk.key, chunk.seq, waiting_for)
    if turn is Turn.LATE:
        log.warning("chunk applied after its successors: its number was settled without it",
                    extra={"chunk_key": chunk.key, "seq": chunk.seq})
    return turn


def next_seq(conn: psycopg2.extensions.connection) -> int:
    """The sequence number the stream waits for: the smallest one not settled."""
    with transaction(conn), conn.cursor() as cur:
        return stream_next_seq(cur)


def settle_dead_lettered(conn: psycopg2.extensions.connection, chunk: ChunkRef,
                         reason: str) -> None:
    """A chunk moved to the DLQ after its failure budget: the stream goes on without it."""
    if chunk.seq is None:
        return
    with transaction(conn), conn.cursor() as cur:
        lock(cur)
        if not is_done(cur, chunk.key) and number_holder_of(cur, chunk) is None:
            settle_mark(cur, chunk.seq, "dead_lettered", chunk.key, reason)


def settle_number(conn: psycopg2.extensions.connection, seq: int, outcome: str, *,
                  chunk_key: str | None = None, reason: str | None = None,
                  decided_by: str | None = None) -> None:
    """Settle ``seq`` without applying a chunk, as a live run recorded it (``skipped`` or
    ``dead_lettered``): a replay gives its target the live run's settlements this way."""
    if outcome not in ("skipped", "dead_lettered"):
        raise ValueError(f"a number is settled without its chunk as skipped or dead_lettered,"
                         f" not {outcome}")
    with transaction(conn), conn.cursor() as cur:
        lock(cur)
        settle_mark(cur, seq, outcome, chunk_key, reason, decided_by)


class SeqAlreadySettled(ValueError):
    """skip-seq was asked for a number that is applied, rejected or skipped already."""


def skip_seq(conn: psycopg2.extensions.connection, seq: int, *, reason: str,
             decided_by: str, through: int | None = None) -> int:
    """Record an operator's decision that chunk ``seq`` (to ``through``) will never come; the
    new next_seq. A range is skipped whole or not at all.

    A dead-lettered number may be skipped too (the operator decides its chunk will not be
    redriven): the decision replaces the dead-letter in its mark (the chunk's last error stays
    in ``chunk_failures``), unless that chunk has come back and been applied or rejected."""
    last = seq if through is None else through
    if seq < 1 or last < seq:
        raise ValueError(f"sequence numbers must be >= 1 and in order, got {seq}..{last}")
    if not reason.strip():
        raise ValueError("a reason is required")
    with transaction(conn), conn.cursor() as cur:
        lock(cur)
        for n in range(seq, last + 1):
            cur.execute("SELECT outcome, chunk_key, late_outcome, late_chunk_key"
                        " FROM sequence_marks WHERE seq = %s", (n,))
            existing = cur.fetchone()
            if existing is None:
                settle_mark(cur, n, "skipped", None, reason.strip(), decided_by)
                continue
            outcome, key, late_outcome, late_key = existing
            if late_outcome in ("applied", "rejected"):
                raise SeqAlreadySettled(f"sequence number {n} is {outcome}, and its chunk"
                                        f" came late and was {late_outcome} ({late_key})")
            if outcome != "dead_lettered":
                raise SeqAlreadySettled(f"sequence number {n} is already {outcome}"
                                        + (f" ({key})" if key else ""))
            cur.execute("UPDATE sequence_marks SET outcome = 'skipped', chunk_key = NULL,"
                        " reason = %s, decided_by = %s, marked_at = clock_timestamp()"
                        " WHERE seq = %s", (reason.strip(), decided_by, n))
        new_next = stream_next_seq(cur)
    log.warning("sequence number skipped by an operator", extra={
        "seq": seq, "through": last, "reason": reason, "decided_by": decided_by,
        "next_seq": new_next})
    return new_next


def mark_waiting(conn: psycopg2.extensions.connection, waiting_for: int) -> datetime:
    """Note that a later chunk waits for ``waiting_for``; since when it has been waiting."""
    with transaction(conn), conn.cursor() as cur:
        cur.execute("""
            UPDATE stream_position
            SET waiting_since = coalesce(waiting_since, clock_timestamp())
            WHERE next_seq = %s
            RETURNING waiting_since""", (waiting_for,))
        row = cur.fetchone()
    return row[0] if row else datetime.now().astimezone()
