"""Whose turn it is: the chunks in hand that may be applied now, in production order
(``engine.ordering.ready_run``), a missing predecessor looked up in S3, and the gaps the
stream waits on, logged (docs/detection-semantics.md)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from chunk_contract.layout import start_after_seq
from chunk_contract.listing import list_chunks
from spark_detector.config import WorkerSettings
from spark_detector.engine import failures
from spark_detector.engine import state as detection_state
from spark_detector.engine.failures import ChunkFailure
from spark_detector.engine.ordering import consecutive_from, ready_run
from spark_detector.worker import emf
from spark_detector.worker.database import Database
from spark_detector.worker.hand import Hand
from spark_detector.worker.summary import BatchSummary

logger = logging.getLogger(__name__)
NOTE_EVERY_SECONDS = 60  # a full hand, a stream gap: logged at most this often


class Turns:
    def __init__(self, settings: WorkerSettings, s3, db: Database, hand: Hand,
                 clock: Callable[[], float]) -> None:
        self.settings = settings
        self.s3 = s3
        self.db = db
        self.hand = hand
        self._clock = clock
        self._last_gap_alert: float | None = None
        self._last_full_hand_note: float | None = None

    def ready(self, summary: BatchSummary, records: dict[str, ChunkFailure]) -> list[str]:
        """The chunks to aggregate now, in apply order (docs/detection-semantics.md);
        ``records``: the failure records of the chunks in hand."""
        s, hand = self.settings, self.hand
        next_seq = self.db.run(detection_state.next_seq)
        now = datetime.now(UTC)
        blocked = {k for k, r in records.items() if r.retry_after and r.retry_after > now}
        hand.failed_before = set(records)
        held = {key: hand.seq(key) for key in hand.chunks}
        plan = ready_run(held, next_seq, s.max_batch_chunks, blocked)
        ready = list(plan.ready)
        if plan.look_from is not None:
            found = self.look_in_s3(plan.look_from, s.max_batch_chunks - len(ready))
            # another worker holds their messages: failing ones wait for their retry here too
            new = [key for key in found if key not in records]
            records.update((k, r) for k, r in self.db.run(
                lambda conn: failures.failures_of(conn, new)).items()
                if r.dead_lettered_at is None)
            blocked |= {k for k in new if k in records and (retry := records[k].retry_after)
                        and retry > now}
            hand.failed_before = set(records)
            for key in found:
                if key in blocked:
                    retry_after = records[key].retry_after
                    logger.info("chunk waits for its retry time", extra={
                        "chunk_key": key,
                        "retry_after": retry_after.isoformat() if retry_after else None})
                    break
                if key not in ready:
                    ready.append(key)
                    summary.pulled += 1
        summary.waiting = sum(1 for k in plan.waiting if k not in ready)
        if summary.waiting and not any(hand.seq(k) == next_seq for k in ready):
            self.note_gap(next_seq, summary.waiting, blocked)
        suspects = [k for k in ready if k in records]
        if suspects:  # a chunk that failed before goes alone, so it cannot fail others
            first = suspects[0]
            ready = ready[: ready.index(first)] or [first]
        return ready

    def look_in_s3(self, first_seq: int, limit: int) -> list[str]:
        """Chunks ``first_seq, first_seq+1, ...`` found in S3, their events late or lost."""
        if limit <= 0:
            return []
        s = self.settings
        listed = {c.key: c for c in list_chunks(
            self.s3, s.bucket, s.chunk_prefix, s.chunk_suffix,
            start_after=start_after_seq(s.chunk_prefix, first_seq), limit=limit + 10)}
        found = consecutive_from(first_seq, {k: c.seq for k, c in listed.items()}, limit)
        for key in found:
            if key not in self.hand.chunks:
                logger.info("chunk taken from S3 ahead of its message", extra={
                    "chunk_key": key, "seq": listed[key].seq})
                self.hand.chunks[key] = listed[key].message(s.bucket)
        return found

    def note_full_hand(self) -> None:
        now = self._clock()
        if (self._last_full_hand_note is not None
                and now - self._last_full_hand_note < NOTE_EVERY_SECONDS):
            return
        self._last_full_hand_note = now
        logger.warning("hand full: receiving nothing until the stream moves on", extra={
            "chunks_held": len(self.hand.chunks), "max_held": self.settings.max_held_chunks,
            "hint": "early chunks wait for a predecessor: see `status`, line order"})

    def note_gap(self, next_seq: int, waiting: int, blocked: set[str]) -> None:
        since = self.db.run(lambda conn: detection_state.mark_waiting(conn, next_seq))
        waited = (datetime.now(UTC) - since).total_seconds()
        now = self._clock()
        if waited < self.settings.gap_alert_seconds or (
                self._last_gap_alert is not None
                and now - self._last_gap_alert < NOTE_EVERY_SECONDS):
            return
        self._last_gap_alert = now
        # "stream gap" is the alarm's metric filter (template.yaml, StreamGapAlarm)
        fields = {
            "waiting_for_seq": next_seq, "waiting_s": round(waited, 1),
            "chunks_waiting": waiting, "failing": sorted(blocked),
            "hint": "a chunk that will never come: python -m spark_detector skip-seq N"}
        logger.error("stream gap", extra={**fields, **emf.metric_directive(
            self.settings.metrics_namespace, fields, emf.GAP_METRICS)})
