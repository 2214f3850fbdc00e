"""The detection engine: cumulative state, the three rules, emit-once and production order, in
PostgreSQL (docs/detection-semantics.md).

``apply_chunk`` adds one chunk's aggregates to the state and evaluates the rules for the
merchants the chunk touched, all in one transaction that starts by taking a transaction-level
advisory lock. Concurrent workers therefore apply chunks one at a time, in the order they get
the lock, and the result equals that sequential order. The per-chunk work is a constant number
of set-based statements whatever the chunk's size:

1. lock; claim the chunk in ``processed_chunks`` (gap-free ``apply_order``), unless it is there
   or in ``rejected_chunks`` already;
2. COPY the chunk's pairs into a session temp table;
3. one upsert of ``pair_state`` chained (CTE) with the upserts of ``merchant_state`` and
   ``pair_count_histogram`` (``rule_evaluation.update_state``);
4. the three rules for the merchants the chunk touched, at a cost that follows the chunk's
   pairs, not the merchants' customers, and the new detection keys inserted, numbered gap-free
   in (patternId, MerchantId, customerName) order (``rule_evaluation.evaluate``: a handful of
   set-based statements);
5. close outbox files of 50; record the chunk's timing; commit.

Percentiles are those of ``percentile_cont`` on double precision (its only numeric form),
computed without sorting a merchant (``rule_evaluation``); ``avg_weight`` is
``weight_sum::float8 / weighted_count``, so a Python model computing the same IEEE operations
(``tests/reference_model.py``) gets bit-identical results.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal

import psycopg2.extensions

from chunk_contract.layout import CHUNK_PREFIX, DETECTIONS_PREFIX, chunk_seq
from spark_detector import rule_evaluation
from spark_detector.chunk_aggregates import ChunkAggregates
from spark_detector.db import ENGINE_LOCK, LOCK_NAMESPACE, transaction
from spark_detector.detection import Detection, detection_from_row
from spark_detector.failpoints import failpoint
from spark_detector.ordering import DuplicateNumber, OutOfTurn, Turn, number_holder, turn_of
from spark_detector.outbox import close_full_files
from spark_detector.pair_copy import COPY_COLUMNS, PreparedPairs, pairs_copy_text

__all__ = [
    "ChunkRef",
    "Detection",
    "DuplicateNumber",
    "InvalidAggregates",
    "OutOfTurn",
    "Thresholds",
    "apply_chunk",
    "chunk_status",
    "done_chunk_keys",
    "number_holders",
    "record_rejected_chunk",
    "settle_number",
    "settled_etags",
    "thresholds_from_env",
    "try_apply_chunk",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Thresholds:
    """The rules' constants (the documented defaults); tests use small ones."""

    upgrade_min_total: int = 50_000  # PatId1: total(m) > this
    upgrade_count_percentile: float = 0.90  # PatId1: txn_count >= this percentile
    upgrade_weight_percentile: float = 0.10  # PatId1: avg_weight <= this percentile
    child_min_count: int = 80  # PatId2: txn_count >= this
    child_max_avg_amount: Decimal = Decimal(23)  # PatId2: amount_sum < this * txn_count
    dei_min_female: int = 100  # PatId3: female(m) > this (and female < male)


# Environment variables that override Thresholds (read by the worker's config at start-up).
THRESHOLD_ENV = {
    "upgrade_min_total": "PATID1_MIN_TOTAL",
    "upgrade_count_percentile": "PATID1_COUNT_PERCENTILE",
    "upgrade_weight_percentile": "PATID1_WEIGHT_PERCENTILE",
    "child_min_count": "PATID2_MIN_COUNT",
    "child_max_avg_amount": "PATID2_MAX_AVG_AMOUNT",
    "dei_min_female": "PATID3_MIN_FEMALE",
}


def thresholds_from_env(env: Mapping[str, str]) -> Thresholds:
    """Thresholds with any of ``THRESHOLD_ENV``'s variables that are set applied."""
    overrides: dict[str, object] = {}
    for field in fields(Thresholds):
        name = THRESHOLD_ENV[field.name]
        raw = env.get(name)
        if raw is None or raw == "":
            continue
        kind = {"int": int, "float": float, "Decimal": Decimal}[str(field.type)]
        try:
            overrides[field.name] = kind(raw)
        except (ValueError, ArithmeticError) as exc:
            raise ValueError(f"{name}={raw!r} is not a valid {field.type}") from exc
    return Thresholds(**overrides)


@dataclass(frozen=True)
class ChunkRef:
    key: str
    etag: str = ""
    event_time: datetime | None = None  # S3 event time, kept for latency figures
    prefix: str = CHUNK_PREFIX  # the chunk prefix the key was found under

    @property
    def seq(self) -> int | None:
        """The producer's sequence number in the key; None for a hand-uploaded chunk."""
        return chunk_seq(self.key, self.prefix)


class InvalidAggregates(ValueError):
    """The aggregates handed to apply_chunk break the ChunkAggregates contract."""


def _lock(cur: psycopg2.extensions.cursor) -> None:
    cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_NAMESPACE, ENGINE_LOCK))


_CLAIM_SQL = """
SET LOCAL client_min_messages = warning;
CREATE TEMP TABLE IF NOT EXISTS chunk_pairs (
    merchant        text COLLATE "C" NOT NULL,
    customer        text COLLATE "C" NOT NULL,
    txn_count       bigint NOT NULL,
    amount_sum      numeric NOT NULL,
    weight_sum      numeric NOT NULL,
    weighted_count  bigint NOT NULL,
    first_gender    text NOT NULL
) ON COMMIT DELETE ROWS;
""" + rule_evaluation.TEMP_TABLES_SQL + """
INSERT INTO processed_chunks
    (chunk_key, apply_order, etag, rows_good, rows_rejected, pairs, event_time, spark_ms, seq)
SELECT %(key)s, next.apply_order, %(etag)s, %(rows_good)s, %(rows_rejected)s, %(pairs)s,
       %(event_time)s, %(spark_ms)s, %(seq)s
FROM (SELECT coalesce(max(apply_order), 0) + 1 AS apply_order FROM processed_chunks) next
WHERE NOT EXISTS (SELECT 1 FROM rejected_chunks WHERE chunk_key = %(key)s)
ON CONFLICT (chunk_key) DO NOTHING
RETURNING apply_order
"""

_COPY_SQL = f"COPY chunk_pairs ({', '.join(COPY_COLUMNS)}) FROM STDIN"

def _validate(aggregates: ChunkAggregates) -> None:
    key = aggregates.chunk_key
    keys = {(p.merchant, p.customer) for p in aggregates.pairs}
    if len(keys) != len(aggregates.pairs):
        raise InvalidAggregates(f"{key}: a (merchant, customer) pair appears twice")
    for p in aggregates.pairs:
        if p.txn_count < 1 or p.weighted_count < 0 or p.weighted_count > p.txn_count:
            raise InvalidAggregates(
                f"{key}: pair ({p.merchant}, {p.customer}) has txn_count {p.txn_count}"
                f" and weighted_count {p.weighted_count}"
            )
    # every good row is in exactly one pair; this also refuses aggregates whose pairs were
    # dropped once prepared (the worker keeps only the COPY text of a prepared chunk)
    counted = sum(p.txn_count for p in aggregates.pairs)
    if counted != aggregates.rows_good:
        raise InvalidAggregates(
            f"{key}: its pairs hold {counted} transactions, rows_good is {aggregates.rows_good}")


def prepare_pairs(aggregates: ChunkAggregates) -> PreparedPairs:
    """Check the aggregates (``InvalidAggregates``) and write their COPY text."""
    _validate(aggregates)
    return PreparedPairs(aggregates.chunk_key, len(aggregates.pairs),
                         pairs_copy_text(aggregates.pairs))


def apply_chunk(
    conn: psycopg2.extensions.connection,
    chunk: ChunkRef,
    aggregates: ChunkAggregates,
    *,
    y_start_time: datetime,
    thresholds: Thresholds = Thresholds(),  # frozen: a shared default is safe
    spark_ms: int | None = None,
    detections_prefix: str = DETECTIONS_PREFIX,
    prepared: PreparedPairs | None = None,
) -> list[Detection]:
    """``try_apply_chunk``, with [] for a chunk already applied or rejected."""
    return try_apply_chunk(conn, chunk, aggregates, y_start_time=y_start_time,
                           thresholds=thresholds, spark_ms=spark_ms,
                           detections_prefix=detections_prefix, prepared=prepared) or []


def _is_done(cur: psycopg2.extensions.cursor, key: str) -> bool:
    cur.execute("SELECT 1 FROM processed_chunks WHERE chunk_key = %(key)s"
                " UNION ALL SELECT 1 FROM rejected_chunks WHERE chunk_key = %(key)s",
                {"key": key})
    return cur.fetchone() is not None


def try_apply_chunk(
    conn: psycopg2.extensions.connection,
    chunk: ChunkRef,
    aggregates: ChunkAggregates,
    *,
    y_start_time: datetime,
    thresholds: Thresholds = Thresholds(),  # frozen: a shared default is safe
    spark_ms: int | None = None,
    detections_prefix: str = DETECTIONS_PREFIX,
    prepared: PreparedPairs | None = None,
) -> list[Detection] | None:
    """Apply one chunk and return the detections it fired, in seq order; commits.

    A chunk already applied or rejected (by another worker, say) returns None and changes
    nothing. A sequenced chunk whose predecessor is not settled yet raises ``OutOfTurn``, one
    whose number another chunk holds raises ``DuplicateNumber``; neither changes anything. A
    sequenced chunk whose number was settled without it (skipped or dead-lettered, then
    redriven) is applied late, where it arrives: its number's mark keeps that settlement
    and records the late apply beside it. ``detections_prefix`` names the S3 keys
    of the detection files this commit closes. ``prepared``: ``prepare_pairs(aggregates)``
    done ahead (else it is done here); then only the counts of ``aggregates`` are read, and
    its pairs may have been dropped (``without_pairs``).
    """
    started = time.perf_counter()
    if y_start_time.tzinfo is None:
        raise ValueError("y_start_time must be timezone-aware")
    if aggregates.chunk_key != chunk.key:
        raise InvalidAggregates(
            f"{chunk.key}: aggregates are for another chunk ({aggregates.chunk_key})")
    if prepared is None:
        prepared = prepare_pairs(aggregates)
    elif prepared.chunk_key != chunk.key:
        raise InvalidAggregates(f"{chunk.key}: pairs prepared for another chunk "
                                f"({prepared.chunk_key})")
    with transaction(conn), conn.cursor() as cur:
        _lock(cur)
        if _is_done(cur, chunk.key):
            log.info("chunk already done", extra={"chunk_key": chunk.key})
            return None
        turn = _claim_turn(cur, chunk)
        cur.execute(
            _CLAIM_SQL,
            {
                "seq": chunk.seq,
                "key": chunk.key,
                "etag": chunk.etag,
                "rows_good": aggregates.rows_good,
                "rows_rejected": aggregates.rows_rejected,
                "pairs": prepared.pairs,
                "event_time": chunk.event_time,
                "spark_ms": spark_ms,
            },
        )
        claimed = cur.fetchone()
        if claimed is None:  # unreachable under the lock; kept as the guard of exactly-once
            return None
        apply_order = claimed[0]
        if turn is not Turn.UNSEQUENCED:
            _settle(cur, chunk.seq, "applied", chunk.key)
        failpoint("apply_chunk", chunk.key)
        cur.copy_expert(_COPY_SQL, io.StringIO(prepared.copy_text))
        rules = {
            "chunk_key": chunk.key,
            "apply_order": apply_order,
            "y_start_time": y_start_time,
            "upgrade_min_total": thresholds.upgrade_min_total,
            "count_percentile": thresholds.upgrade_count_percentile,
            "weight_percentile": thresholds.upgrade_weight_percentile,
            "child_min_count": thresholds.child_min_count,
            "child_max_avg_amount": thresholds.child_max_avg_amount,
            "dei_min_female": thresholds.dei_min_female,
        }
        rule_evaluation.update_state(cur, rules)
        rows = rule_evaluation.evaluate(cur, rules, chunk.key)
        detections = sorted((detection_from_row(r) for r in rows), key=lambda d: d.seq)
        files = close_full_files(cur, prefix=detections_prefix)
        apply_ms = round((time.perf_counter() - started) * 1000)
        cur.execute(
            "UPDATE processed_chunks SET apply_ms = %s, detections = %s WHERE chunk_key = %s",
            (apply_ms, len(detections), chunk.key),
        )
    log.info(
        "chunk applied",
        extra={
            "chunk_key": chunk.key,
            "apply_order": apply_order,
            "pairs": prepared.pairs,
            "detections": len(detections),
            "files_closed": files,
            "apply_ms": apply_ms,
        },
    )
    return detections


def chunk_status(conn: psycopg2.extensions.connection, key: str) -> str | None:
    """"applied", "rejected" or None (never seen)."""
    with transaction(conn), conn.cursor() as cur:
        cur.execute(
            """
            SELECT 'applied' FROM processed_chunks WHERE chunk_key = %(key)s
            UNION ALL
            SELECT 'rejected' FROM rejected_chunks WHERE chunk_key = %(key)s
            """,
            {"key": key},
        )
        row = cur.fetchone()
    return row[0] if row else None


def settled_etags(conn: psycopg2.extensions.connection, keys: Iterable[str]) -> dict[str, str]:
    """Those of ``keys`` already applied or rejected, with the ETag of the version that was
    ("" when its message named none); one query."""
    wanted = list(dict.fromkeys(keys))
    if not wanted:
        return {}
    with transaction(conn), conn.cursor() as cur:
        cur.execute(
            """
            SELECT chunk_key, etag FROM processed_chunks WHERE chunk_key = ANY(%(keys)s)
            UNION ALL
            SELECT chunk_key, etag FROM rejected_chunks WHERE chunk_key = ANY(%(keys)s)
            """,
            {"keys": wanted},
        )
        return {key: etag or "" for key, etag in cur.fetchall()}


def done_chunk_keys(conn: psycopg2.extensions.connection, keys: Iterable[str]) -> set[str]:
    """Those of ``keys`` already applied or rejected."""
    return set(settled_etags(conn, keys))


def record_rejected_chunk(
    conn: psycopg2.extensions.connection, chunk: ChunkRef, reason: str, quarantine_key: str,
    *, duplicate_of: str | None = None,
) -> bool:
    """Record a chunk rejected whole; True if newly recorded, False if already applied/rejected.

    Takes the engine lock, so a chunk can never end up both applied and rejected. A chunk
    whose number another chunk holds (``duplicate_of``, or found in its number's mark)
    settles nothing; any other sequenced chunk settles its number.
    """
    with transaction(conn), conn.cursor() as cur:
        _lock(cur)
        if duplicate_of is None and chunk.seq is not None:
            duplicate_of = _holder(cur, chunk)
        cur.execute(
            """
            INSERT INTO rejected_chunks
                (chunk_key, reason, quarantine_key, etag, event_time, seq, duplicate_of)
            SELECT %(key)s, %(reason)s, %(quarantine_key)s, %(etag)s, %(event_time)s, %(seq)s,
                   %(duplicate_of)s
            WHERE NOT EXISTS (SELECT 1 FROM processed_chunks WHERE chunk_key = %(key)s)
            ON CONFLICT (chunk_key) DO NOTHING
            """,
            {
                "key": chunk.key,
                "reason": reason,
                "quarantine_key": quarantine_key,
                "etag": chunk.etag,
                "event_time": chunk.event_time,
                "seq": chunk.seq,
                "duplicate_of": duplicate_of,
            },
        )
        recorded = cur.rowcount == 1
        if recorded and chunk.seq is not None and duplicate_of is None:
            # A chunk rejected whole settles its number whenever it comes: it adds nothing
            # to the state, so rejecting it early cannot change what the others detect.
            _settle(cur, chunk.seq, "rejected", chunk.key, reason)
    if recorded:
        log.info("chunk rejected", extra={"chunk_key": chunk.key, "reason": reason,
                                          "duplicate_of": duplicate_of})
    return recorded


# --- production order (docs/detection-semantics.md) ------------------------------------------

# Record a settled sequence number; when it is the one the stream waits for, move next_seq past
# it and past every later number already settled (chunks rejected early, numbers skipped ahead).
# A number settles once: a chunk that carries a number settled without it (skipped, or
# dead-lettered and redriven) is recorded beside that first settlement (late_*), which keeps
# its outcome, reason and who decided it.
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


def _settle(cur: psycopg2.extensions.cursor, seq: int, outcome: str, key: str | None,
            reason: str | None = None, by: str | None = None) -> None:
    """Inside a transaction holding the engine lock."""
    cur.execute(_SETTLE_SQL, {"seq": seq, "outcome": outcome, "key": key, "reason": reason,
                              "by": by})


def _next_seq(cur: psycopg2.extensions.cursor) -> int:
    cur.execute("SELECT next_seq FROM stream_position")
    row = cur.fetchone()
    return 1 if row is None else row[0]


_MARKS_SQL = ("SELECT seq, outcome, chunk_key, late_chunk_key FROM sequence_marks"
              " WHERE seq = ANY(%s)")


def _holder(cur: psycopg2.extensions.cursor, chunk: ChunkRef) -> str | None:
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


def _claim_turn(cur: psycopg2.extensions.cursor, chunk: ChunkRef) -> Turn:
    """The chunk's turn; ``DuplicateNumber`` when its number is another chunk's,
    ``OutOfTurn`` when a predecessor is not settled yet."""
    if chunk.seq is not None:
        holder = _holder(cur, chunk)
        if holder is not None:
            raise DuplicateNumber(chunk.key, chunk.seq, holder)
    waiting_for = _next_seq(cur)
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
        return _next_seq(cur)


def settle_dead_lettered(conn: psycopg2.extensions.connection, chunk: ChunkRef,
                         reason: str) -> None:
    """A chunk moved to the DLQ after its failure budget: the stream goes on without it."""
    if chunk.seq is None:
        return
    with transaction(conn), conn.cursor() as cur:
        _lock(cur)
        if not _is_done(cur, chunk.key) and _holder(cur, chunk) is None:
            _settle(cur, chunk.seq, "dead_lettered", chunk.key, reason)


def settle_number(conn: psycopg2.extensions.connection, seq: int, outcome: str, *,
                  chunk_key: str | None = None, reason: str | None = None,
                  decided_by: str | None = None) -> None:
    """Settle ``seq`` without applying a chunk, as a live run recorded it (``skipped`` or
    ``dead_lettered``): a replay gives its target the live run's settlements this way."""
    if outcome not in ("skipped", "dead_lettered"):
        raise ValueError(f"a number is settled without its chunk as skipped or dead_lettered,"
                         f" not {outcome}")
    with transaction(conn), conn.cursor() as cur:
        _lock(cur)
        _settle(cur, seq, outcome, chunk_key, reason, decided_by)


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
        _lock(cur)
        for n in range(seq, last + 1):
            cur.execute("SELECT outcome, chunk_key, late_outcome, late_chunk_key"
                        " FROM sequence_marks WHERE seq = %s", (n,))
            existing = cur.fetchone()
            if existing is None:
                _settle(cur, n, "skipped", None, reason.strip(), decided_by)
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
        new_next = _next_seq(cur)
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
