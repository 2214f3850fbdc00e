"""The pure middle of ``python -m spark_detector replay``: what to replay, in which order, into
where, with which rules, and how the result differs from the live run.

Nothing here talks to S3, PostgreSQL or Spark; ``spark_detector.ops.replay`` does the I/O and calls
these functions with plain values.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime

from spark_detector.db import redact_dsn
from spark_detector.engine.rules import RuleError, Thresholds, with_rules

RECORDED, KEYS = "recorded", "keys"
ORDERS = (RECORDED, KEYS)


class ReplayError(RuntimeError):
    """The replay cannot run as asked; the message says why and what to do."""


class ReplayRefused(ReplayError):
    """A guarded operation was refused (it would touch the live run, or a worker is running)."""


# --- rules ---------------------------------------------------------------------------------


def thresholds_with_rules(base: Thresholds, assignments: Iterable[str]) -> Thresholds:
    """``base`` with ``--rule NAME=VALUE`` overrides (``rules.with_rules``): parsed and
    range-checked exactly as the worker's environment is, refused as a ReplayError."""
    try:
        return with_rules(base, assignments)
    except RuleError as exc:
        raise ReplayError(str(exc)) from exc


# --- which chunks, in which order ----------------------------------------------------------


@dataclass(frozen=True)
class ArchivedChunk:
    """A chunk object under the chunk prefix, as listed."""

    key: str
    etag: str
    last_modified: datetime | None = None
    size: int = 0


@dataclass(frozen=True)
class RecordedChunk:
    """A ``processed_chunks`` row of the live run."""

    key: str
    apply_order: int
    etag: str = ""
    event_time: datetime | None = None


@dataclass(frozen=True)
class PlannedChunk:
    key: str
    etag: str
    event_time: datetime | None


@dataclass(frozen=True)
class ReplayPlan:
    """The chunks to replay in apply order, and what was left out and why."""

    order: str
    chunks: tuple[PlannedChunk, ...]
    skipped_rejected: tuple[str, ...]  # rejected whole by the live run
    not_applied_live: tuple[str, ...]  # listed, but the live run has not applied them (yet)
    changed_since_applied: tuple[str, ...]  # the object's ETag differs from the recorded one

    @property
    def keys(self) -> list[str]:
        return [c.key for c in self.chunks]


def plan_chunks(
    listed: Sequence[ArchivedChunk],
    recorded: Sequence[RecordedChunk] | None,
    rejected: Iterable[str],
    order: str,
) -> ReplayPlan:
    """The replay's chunks in apply order.

    ``order="recorded"`` replays exactly the chunks the live run applied, in its recorded
    ``apply_order``, so the result can be compared with it like for like; chunks it has not
    applied yet are left out and reported. Every recorded chunk must still be in the archive.
    ``order="keys"`` replays every listed chunk in key order (production order, since chunk
    names carry the producer's sequence number): for a database that is gone. Either way the
    chunks the live run rejected whole are skipped.
    """
    if order not in ORDERS:
        raise ReplayError(f"--order {order!r}: expected one of {ORDERS}")
    rejected_keys = set(rejected)
    by_key = {c.key: c for c in listed}
    if order == KEYS:
        chosen = [c for c in sorted(by_key.values(), key=lambda c: c.key)
                  if c.key not in rejected_keys]
        chunks = tuple(PlannedChunk(c.key, c.etag, c.last_modified) for c in chosen)
        return ReplayPlan(order, chunks, _sorted(rejected_keys & by_key.keys()), (), ())
    if recorded is None:
        raise ReplayError("no recorded apply order: the live database has no processed_chunks;"
                          " use --order keys to replay in key (production) order")
    ordered = sorted(recorded, key=lambda r: r.apply_order)
    missing = [r.key for r in ordered if r.key not in by_key]
    if missing:
        raise ReplayError(
            f"{len(missing)} chunk(s) the live run applied are no longer in the archive"
            f" (first: {missing[0]}); a replay without them would not be the live run's")
    applied = {r.key for r in ordered}
    chunks = tuple(PlannedChunk(r.key, r.etag or by_key[r.key].etag,
                                r.event_time or by_key[r.key].last_modified) for r in ordered)
    changed = tuple(r.key for r in ordered if r.etag and r.etag != by_key[r.key].etag)
    pending = _sorted(k for k in by_key if k not in applied and k not in rejected_keys)
    return ReplayPlan(order, chunks, _sorted(rejected_keys & by_key.keys()), pending, changed)


def unsettled_gaps(seqs: Iterable[int | None], settled: Iterable[int | None]) -> list[int]:
    """Sequence numbers below the highest planned one (``seqs``: the planned chunks') that
    no planned chunk carries and that are not ``settled`` already: the engine would wait for
    them forever."""
    planned = {seq for seq in seqs if seq is not None}
    if not planned:
        return []
    known = planned | {seq for seq in settled if seq is not None}
    return [seq for seq in range(1, max(planned)) if seq not in known]


def _sorted(keys: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(keys))


# --- where the output goes -----------------------------------------------------------------

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Target:
    """Where the replay writes: another database (``database_url``), or a schema of the live
    database (``schema``), or the live database itself (``replace``)."""

    database_url: str | None = None
    schema: str | None = None
    replace: bool = False

    def describe(self) -> str:
        if self.replace:
            return "the live database (--replace)"
        if self.schema:
            return f"schema {self.schema} of the live database"
        return "database " + redact_dsn(self.database_url or "")


def parse_target(into: str | None, replace: bool) -> Target:
    """``--into URL`` (a database, created if missing) or ``--into NAME`` (a schema of the live
    database, created if missing); ``--replace`` instead of ``--into``."""
    if replace:
        if into:
            raise ReplayError("--replace rebuilds the live database: it takes no --into")
        return Target(replace=True)
    if not into:
        raise ReplayError("say where the replay goes: --into postgresql://.../DB or --into"
                          " SCHEMA (or --replace to rebuild the live database)")
    if "://" in into:
        return Target(database_url=into)
    if not _SCHEMA_NAME.match(into) or into.startswith("pg_"):
        raise ReplayError(f"--into {into!r}: a schema name must be lower-case letters, digits"
                          " and _ (not pg_...), or give a postgresql:// URL")
    return Target(schema=into)


def check_publish_prefix(prefix: str, *, detections_prefix: str, chunk_prefix: str,
                         replace: bool) -> str:
    """The detection-file prefix for ``--publish``; the live one only with ``--replace``.

    A prefix under the chunk prefix is refused always: its files would trigger the pipeline.
    """
    prefix = prefix if prefix.endswith("/") else prefix + "/"
    if prefix.startswith(chunk_prefix) or chunk_prefix.startswith(prefix):
        raise ReplayRefused(f"--publish {prefix}: overlaps the chunk prefix {chunk_prefix};"
                            " files there would trigger the pipeline")
    live = prefix.startswith(detections_prefix) or detections_prefix.startswith(prefix)
    if live and not replace:
        raise ReplayRefused(f"--publish {prefix}: that is the live detection prefix"
                            f" ({detections_prefix}); choose another (or use --replace)")
    return prefix


# --- compare with the live run -------------------------------------------------------------

DetectionKey = tuple[str, str, str]  # (patternId, MerchantId, customerName)


@dataclass(frozen=True)
class FiredDetection:
    """A detection as the comparison sees it: its key and the chunk after which it fired."""

    seq: int
    pattern_id: str
    merchant_id: str
    customer_name: str
    chunk_key: str
    apply_order: int

    @property
    def key(self) -> DetectionKey:
        return (self.pattern_id, self.merchant_id, self.customer_name)


ADDED, REMOVED, MOVED = "added", "removed", "fired_after_other_chunk"


@dataclass(frozen=True)
class DetectionChange:
    change: str  # ADDED (replay only), REMOVED (live only), MOVED (both, other chunk)
    pattern_id: str
    merchant_id: str
    customer_name: str
    live_chunk_key: str | None
    live_apply_order: int | None
    replay_chunk_key: str | None
    replay_apply_order: int | None


COMPARE_COLUMNS = tuple(f.name for f in fields(DetectionChange))


def compare_detections(live: Sequence[FiredDetection], replayed: Sequence[FiredDetection]
                       ) -> list[DetectionChange]:
    """Detections added, removed, or fired after a different chunk, in (pattern, merchant,
    customer) order. Detections with the same key and chunk are the same and not listed."""
    live_by_key = {d.key: d for d in live}
    replay_by_key = {d.key: d for d in replayed}
    changes = []
    for key in sorted(live_by_key.keys() | replay_by_key.keys()):
        was, now = live_by_key.get(key), replay_by_key.get(key)
        if was is not None and now is not None and was.chunk_key == now.chunk_key:
            continue
        change = ADDED if was is None else REMOVED if now is None else MOVED
        changes.append(DetectionChange(
            change, *key,
            was.chunk_key if was else None, was.apply_order if was else None,
            now.chunk_key if now else None, now.apply_order if now else None,
        ))
    return changes


def render_compare_csv(changes: Sequence[DetectionChange]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COMPARE_COLUMNS)
    for c in changes:
        writer.writerow(["" if getattr(c, name) is None else getattr(c, name)
                         for name in COMPARE_COLUMNS])
    return out.getvalue()


def compare_summary(live: Sequence[FiredDetection], replayed: Sequence[FiredDetection],
                    changes: Sequence[DetectionChange], rules: Mapping[str, str] | None = None
                    ) -> str:
    """A short table: detections per pattern in each run, and the changes per pattern."""
    live_n = Counter(d.pattern_id for d in live)
    replay_n = Counter(d.pattern_id for d in replayed)
    kinds = Counter((c.pattern_id, c.change) for c in changes)
    patterns = sorted(live_n.keys() | replay_n.keys() | {p for p, _ in kinds})
    lines = []
    if rules:
        lines.append("changed: " + ", ".join(f"{k}={v}" for k, v in sorted(rules.items())))
    lines.append(f"{'pattern':<8} {'live':>6} {'replay':>6} {'added':>6} {'removed':>7}"
                 f" {'other chunk':>11}")
    for p in [*patterns, "total"]:
        def n(counter: Counter, pattern: str = p) -> int:
            return sum(counter.values()) if pattern == "total" else counter[pattern]

        def k(kind: str, pattern: str = p) -> int:
            return sum(v for (q, c), v in kinds.items()
                       if c == kind and (pattern == "total" or q == pattern))

        lines.append(f"{p:<8} {n(live_n):>6} {n(replay_n):>6} {k(ADDED):>6} {k(REMOVED):>7}"
                     f" {k(MOVED):>11}")
    lines.append("the replay equals the live run, key for key and chunk for chunk"
                 if not changes
                 else f"{len(changes)} detection(s) differ")
    return "\n".join(lines)
