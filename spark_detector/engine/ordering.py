"""Production order: which chunks may be applied now, as pure functions.

The producer names its chunks ``chunk-<seq>-<time>.csv`` with a gap-free ``seq``
(``chunk_contract.layout.chunk_seq`` reads it). A chunk is applied only when every smaller
number is settled (applied, rejected whole, dead-lettered or skipped); the database's
``stream_position.next_seq`` is the first number not settled. A number is settled once: a
second chunk carrying it is a duplicate (``number_holder``). The engine enforces both rules
inside the apply transaction (``OutOfTurn``, ``DuplicateNumber``); the worker uses the
functions here to pick what to aggregate, so that it rarely meets those errors.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from chunk_contract.layout import CHUNK_PREFIX, chunk_seq

__all__ = ["DuplicateNumber", "OutOfTurn", "Turn", "number_holder", "ready_run", "turn_of"]


class Turn(enum.Enum):
    UNSEQUENCED = "unsequenced"  # no number in the name (hand upload): applied as it comes
    NOW = "now"  # the number the stream waits for
    EARLY = "early"  # a predecessor is not settled yet: wait
    LATE = "late"  # its number was settled without it (skipped, dead-lettered): apply now


def turn_of(seq: int | None, next_seq: int) -> Turn:
    if seq is None:
        return Turn.UNSEQUENCED
    if seq == next_seq:
        return Turn.NOW
    return Turn.EARLY if seq > next_seq else Turn.LATE


class OutOfTurn(RuntimeError):
    """A chunk was offered for apply before its predecessor was settled (nothing changed)."""

    def __init__(self, key: str, seq: int | None, next_seq: int) -> None:
        super().__init__(f"{key}: chunk {seq} must wait for chunk {next_seq}")
        self.key, self.seq, self.next_seq = key, seq, next_seq


class DuplicateNumber(RuntimeError):
    """A chunk carries a sequence number another chunk settled (nothing changed)."""

    def __init__(self, key: str, seq: int, holder: str) -> None:
        super().__init__(duplicate_reason(seq, holder))
        self.key, self.seq, self.holder = key, seq, holder


def number_holder(key: str, outcome: str, chunk_key: str | None,
                  late_chunk_key: str | None) -> str | None:
    """The chunk that holds a settled number, when it is not ``key``: ``key`` is then a
    duplicate of it (two producers, a copy, a re-upload under another name).

    ``outcome``, ``chunk_key`` and ``late_chunk_key`` are the number's ``sequence_marks`` row.
    The chunk it was settled with keeps it (a dead-lettered chunk redriven is applied late),
    and so does the one chunk that came late for it; a number skipped by an operator is
    taken by the first chunk that turns up after all.
    """
    if key in (chunk_key, late_chunk_key):
        return None
    if late_chunk_key is not None:
        return late_chunk_key
    return None if outcome == "skipped" else chunk_key


def duplicate_reason(seq: int, holder: str) -> str:
    return f"duplicate sequence number {seq}: the number belongs to {holder}"


@dataclass(frozen=True)
class ReadyPlan:
    """What to do with the chunks in hand, given the stream's next_seq."""

    ready: tuple[str, ...]  # keys to aggregate and apply now, in apply order
    waiting: tuple[str, ...]  # sequenced keys that must wait for a predecessor
    look_from: int | None  # look in S3 for chunks from this number on (a gap before held ones)


def ready_run(held: Mapping[str, int | None], next_seq: int, limit: int,
              blocked: Iterable[str] = ()) -> ReadyPlan:
    """Pick the chunks to work on now from ``held`` (key -> seq, in arrival order).

    Unsequenced and late chunks are ready as they came. Sequenced ones are ready as a run of
    consecutive numbers from ``next_seq``; the run stops at a number not in hand or at a
    ``blocked`` key (a failing chunk waiting for its retry). When the run stops at a number
    not in hand while later ones are held, ``look_from`` says where S3 should be searched:
    the predecessor's event may be late or lost, but its object may be there.
    """
    blocked = set(blocked)
    ready: list[str] = []
    by_seq: dict[int, str] = {}
    for key, seq in held.items():
        if key in blocked:
            continue
        turn = turn_of(seq, next_seq)
        if turn in (Turn.UNSEQUENCED, Turn.LATE):
            ready.append(key)
        elif seq is not None and (seq not in by_seq or key < by_seq[seq]):
            by_seq[seq] = key
    ready = ready[:limit]
    n = next_seq
    while len(ready) < limit and n in by_seq:
        ready.append(by_seq[n])
        n += 1
    taken = set(ready)
    waiting = tuple(k for k, s in held.items() if s is not None and s >= next_seq
                    and k not in taken)
    held_beyond = any(s is not None and s >= n for s in held.values())
    blocked_at_n = any(held.get(k) == n for k in blocked)
    look_from = n if held_beyond and len(ready) < limit and not blocked_at_n else None
    return ReadyPlan(tuple(ready), waiting, look_from)


def consecutive_from(first: int, listed: Mapping[str, int | None], limit: int) -> list[str]:
    """Keys of a listing (key -> seq) forming the run ``first, first+1, ...``, at most
    ``limit``; of two keys with one number, the first in key order."""
    run: list[str] = []
    expected = first
    for key in sorted(listed):
        seq = listed[key]
        if seq is None or seq < expected:
            continue
        if seq != expected or len(run) == limit:
            break
        run.append(key)
        expected += 1
    return run


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
