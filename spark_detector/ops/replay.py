"""`python -m spark_detector replay`: rebuild state and detections from the chunk archive.

The chunk archive in S3 is the source of truth. A replay:

1. reads the live run's record (``processed_chunks`` apply order, ``rejected_chunks``, the
   sequence numbers settled without their chunk, the detections) and lists the chunk prefix;
   ``replay_plan.plan_chunks`` picks the chunks and their order (the recorded apply order, or
   key order for a database that is gone), skipping the chunks the live run rejected whole;
2. runs ONE Spark job over all of them - ``spark.job.fetch_chunks`` and ``aggregate_chunks``,
   the worker's own fetch / parse / validate / aggregate query, so rows are validated exactly
   as live - which yields every chunk's pair aggregates, the chunks spread over the
   executors. The result stays one compact Arrow table on the driver, turned into one
   chunk's ``ChunkAggregates`` at a time (``spark.batch_result.assemble_batch``) just before
   that chunk is applied, so the driver holds Python objects for two chunks at most;
3. settles the numbers the live run settled without their chunk, as it recorded them
   (``settle_like_live``), then applies the chunks one by one, in the planned order, with
   ``engine.state.apply_chunk`` into the target database or schema - a chunk applied
   late live is applied late here too, at its recorded place: the engine's own
   state update, rules at every chunk boundary for the merchants the chunk touched,
   emit-once and detection numbering. The replay is therefore the live semantics by
   construction, not a second implementation of them;
4. optionally publishes the detection files under another prefix, and compares the result
   with the live detections (added, removed, fired after another chunk).

It never writes to the live tables or the live detection prefix, except with ``--replace``
(rebuild the live database after a loss, ``ops/rebuild.py``), which refuses while any worker
holds the worker lock (``db.try_worker_lock``), keeps every worker out while it is
unfinished, and installs its result in one transaction. Every error a replay expects ends it
with one line and an exit code (``__main__.cmd_replay``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from chunk_contract.layout import chunk_seq
from spark_detector import db
from spark_detector.config import WorkerSettings
from spark_detector.engine import outbox
from spark_detector.engine import state as detection_state
from spark_detector.engine.ordering import DuplicateNumber, OutOfTurn
from spark_detector.engine.publish import publish_pending
from spark_detector.engine.rules import Thresholds, changed_rules
from spark_detector.failpoints import failpoint
from spark_detector.ops.rebuild import LiveRebuild, adopt_live_files
from spark_detector.ops.replay_archive import (
    ArchiveAggregates,
    Background,
    aggregate_archive,
    list_archive,
    read_importance,
)
from spark_detector.ops.replay_db import (
    LiveRun,
    connect_target,
    fired_detections,
    identity,
    prepare_target,
    read_live_run,
    seal_outbox,
    settle_like_live,
)
from spark_detector.ops.replay_plan import (
    RECORDED,
    DetectionChange,
    ReplayError,
    ReplayPlan,
    ReplayRefused,
    check_publish_prefix,
    compare_detections,
    compare_summary,
    parse_target,
    plan_chunks,
    render_compare_csv,
    thresholds_with_rules,
    unsettled_gaps,
)
from spark_detector.parsing import size_rejection
from spark_detector.spark.batch_result import BatchResult
from spark_detector.spark.job import FetchSpec
from spark_detector.spark.reference_weights import compute_weights
from spark_detector.spark.session import EXIT_ON_OOM

logger = logging.getLogger(__name__)
T = TypeVar("T")

# A replay's JVM lives for one job. C1-only JIT and the serial collector cut its CPU by a third
# (bench/bench_replay.py, full data set: 29.9 -> 18.4 CPU-s in the JVM, 1.73 -> 1.43 GiB peak
# memory); the C2 compiler pays off only in a long-lived worker. Out of heap, it exits (the
# replay then fails with one line) instead of hanging.
REPLAY_JAVA_OPTIONS = f"-XX:TieredStopAtLevel=1 -XX:+UseSerialGC {EXIT_ON_OOM}"


def submit_args_for_local_driver(environ: Mapping[str, str]) -> str | None:
    """``PYSPARK_SUBMIT_ARGS`` giving a locally launched driver JVM ``REPLAY_JAVA_OPTIONS``;
    None when the environment sets it already (the operator's choice wins). Under
    ``spark-submit`` the JVM exists before Python starts and the variable is not read."""
    if environ.get("PYSPARK_SUBMIT_ARGS"):
        return None
    return f"--driver-java-options='{REPLAY_JAVA_OPTIONS}' pyspark-shell"


@dataclass(frozen=True)
class ReplayOptions:
    into: str | None = None
    replace: bool = False
    order: str | None = None  # RECORDED, or with --replace the unfinished rebuild's order
    rules: tuple[str, ...] = ()
    importance: str | None = None  # s3://bucket/key or a local path; default: the live one
    publish: str | None = None
    compare: Path | None = None
    reset: bool = False


@dataclass
class ReplayReport:
    target: str
    plan: ReplayPlan
    rules: dict[str, str]
    importance: str
    chunks_applied: int = 0
    chunks_rejected: int = 0  # rejected whole by the replay's own validation
    rows_good: int = 0
    rows_rejected: int = 0
    detections: dict[str, int] = field(default_factory=dict)
    files_published: list[str] = field(default_factory=list)
    live_files_adopted: int = 0  # --replace: rebuilt files identical to the live ones in S3
    live_files_differing: list[str] = field(default_factory=list)
    gaps_skipped: list[int] = field(default_factory=list)  # numbers missing from the archive
    changes: list[DetectionChange] | None = None
    compare_text: str | None = None
    timings_ms: dict[str, int] = field(default_factory=dict)

    def render(self) -> str:
        p = self.plan
        lines = [
            f"replayed {self.chunks_applied} chunk(s) in {p.order} order into {self.target}",
            f"  rows: {self.rows_good} good, {self.rows_rejected} rejected;"
            f" chunks skipped (rejected live): {len(p.skipped_rejected)};"
            f" rejected whole by the replay: {self.chunks_rejected}",
            "  rules: " + (", ".join(f"{k}={v}" for k, v in sorted(self.rules.items()))
                           or "the live thresholds"),
            f"  CustomerImportance: {self.importance}",
            "  detections: " + (", ".join(f"{k} {v}" for k, v in sorted(self.detections.items()))
                                or "none"),
        ]
        if p.not_applied_live:
            lines.append(f"  left out: {len(p.not_applied_live)} chunk(s) the live run has not"
                         f" applied yet (first {p.not_applied_live[0]}); --order keys takes them")
        if self.gaps_skipped:
            lines.append(f"  sequence numbers neither in the archive nor settled live, skipped:"
                         f" {len(self.gaps_skipped)} (first {self.gaps_skipped[0]})")
        if p.changed_since_applied:
            lines.append(f"  WARNING: {len(p.changed_since_applied)} chunk(s) were overwritten"
                         f" since the live run applied them (first {p.changed_since_applied[0]})")
        if self.files_published:
            lines.append(f"  files: {len(self.files_published)} written, e.g."
                         f" {self.files_published[0]}")
        if self.live_files_adopted or self.live_files_differing:
            lines.append(f"  live detection files: {self.live_files_adopted} identical, adopted;"
                         f" {len(self.live_files_differing)} differ (the worker rewrites them)")
        lines.append("  time: " + ", ".join(f"{k} {v} ms" for k, v in self.timings_ms.items()))
        if self.compare_text is not None:
            lines += ["", self.compare_text]
        return "\n".join(lines)


class _Stopwatch:
    def __init__(self) -> None:
        self.timings: dict[str, int] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = round((time.perf_counter() - started) * 1000)
            self.timings[stage] = self.timings.get(stage, 0) + elapsed


# --- the command ---------------------------------------------------------------------------


def run_replay(
    settings: WorkerSettings,
    options: ReplayOptions,
    *,
    s3,
    spark_factory: Callable[[], object],
    fetch_spec: FetchSpec,
) -> ReplayReport:
    """Replay the archive as ``options`` say; the report of what was done.

    ``spark_factory`` is called once, while the reference data is parsed on another
    thread (the two are the replay's biggest fixed costs and use different processes).
    """
    started_at = datetime.now(UTC)
    clock = _Stopwatch()
    target = parse_target(options.into, options.replace)
    thresholds = thresholds_with_rules(settings.thresholds, options.rules)
    if options.replace and (options.rules or options.importance):
        raise ReplayRefused("--replace rebuilds the live run with the live settings: it takes"
                            " no --rule or --importance (replay those --into another target)")
    publish_prefix = None
    if options.publish is not None:
        publish_prefix = check_publish_prefix(
            options.publish, detections_prefix=settings.detections_prefix,
            chunk_prefix=settings.chunk_prefix, replace=options.replace)

    # checked whole before anything is touched (no lock taken, no target created): a bad one
    # stops the replay with nothing changed; its rows are parsed while the rest gets ready
    source, data = read_importance(s3, settings, options.importance)
    reference = Background(functools.partial(compute_weights, data, source), "replay-reference")
    del data  # the thread's alone: freed once the weights are computed
    # --replace: the live database locked against workers; its record is read under the lock
    rebuild = LiveRebuild.lock(settings.database_url) if target.replace else None
    order = rebuild.order(options.order) if rebuild else options.order or RECORDED
    try:
        with clock("target"):
            conn = connect_target(target, settings.database_url)
        try:
            with clock("live_read"):
                live, live_identity = (
                    (read_live_run(rebuild.conn), identity(rebuild.conn)) if rebuild
                    else _read_live(settings, options, order))
            with clock("list"):
                listed = list_archive(s3, settings)
            plan = plan_chunks(listed, live.recorded, [r.key for r in live.rejected], order)
            if options.compare is not None and live.recorded is None:
                raise ReplayError("--compare needs the live run's database, which has no engine"
                                  " tables")
            logger.info("replay planned", extra={
                "order": plan.order, "chunks": len(plan.chunks), "target": target.describe(),
                "skipped_rejected": len(plan.skipped_rejected),
                "not_applied_live": len(plan.not_applied_live)})
            if rebuild is not None:
                rebuild.begin(plan.order)
            with clock("target"):
                prepare_target(conn, target, live_identity, reset=options.reset)
            with clock("spark_start"):
                spark = spark_factory()
            with clock("reference"):
                weights, _ = reference.result()  # compute_weights logged any rejects
            report = ReplayReport(target.describe(), plan, changed_rules(settings.thresholds,
                                                                           thresholds), source)
            prefix = settings.chunk_prefix
            report.gaps_skipped = unsettled_gaps(
                [chunk_seq(k, prefix) for k in plan.keys],
                {r.seq for r in live.settled} | {chunk_seq(r.key, prefix) for r in live.rejected
                                                 if r.duplicate_of is None})
            # As live: a chunk over the byte limit is rejected whole, never read into memory.
            sizes = {c.key: c.size for c in listed}
            oversized = {key: reason for key in plan.keys
                         if (reason := size_rejection(sizes[key], settings.max_chunk_bytes))}
            with clock("spark_job"):
                archive = aggregate_archive(
                    spark, replace(fetch_spec, max_rows=settings.max_chunk_rows),
                    [k for k in plan.keys if k not in oversized], weights)
            with clock("apply"):
                settle_like_live(conn, live, report.gaps_skipped, prefix)
                _apply_all(conn, plan, archive, oversized, thresholds, started_at, report,
                           clock, files_prefix=publish_prefix or settings.detections_prefix,
                           spark_ms=clock.timings["spark_job"], chunk_prefix=prefix)
            with clock("outbox"):
                if publish_prefix is not None:
                    outbox.close_partial_file(conn, publish_prefix)
                    report.files_published = publish_pending(conn, s3, settings.bucket,
                                                             publish_prefix)
                elif rebuild is not None:
                    report.live_files_adopted, report.live_files_differing = adopt_live_files(
                        conn, s3, settings.bucket, settings.detections_prefix)
                else:
                    seal_outbox(conn)
            if rebuild is None:
                replayed = fired_detections(conn)
        finally:
            conn.close()
        if rebuild is not None:
            with clock("install"):
                rebuild.install()
            replayed = fired_detections(rebuild.conn)
    finally:
        if rebuild is not None:
            rebuild.close()
    report.detections = dict(sorted(Counter(d.pattern_id for d in replayed).items()))
    if options.compare is not None:
        with clock("compare"):
            report.changes = compare_detections(live.detections, replayed)
            options.compare.write_text(render_compare_csv(report.changes), encoding="utf-8")
            report.compare_text = compare_summary(live.detections, replayed, report.changes,
                                                  report.rules) + f"\ndiff: {options.compare}"
    report.timings_ms = clock.timings
    logger.info("replay done", extra={"target": report.target, "chunks": report.chunks_applied,
                                      "detections": report.detections, **clock.timings})
    return report


def _read_live(settings: WorkerSettings, options: ReplayOptions, order: str
               ) -> tuple[LiveRun, tuple | None]:
    """The live run's record; with --order keys a live database that is unreachable is fine."""
    try:
        conn = db.connect(settings.database_url)
    except db.DatabaseUnreachable as exc:
        if order == RECORDED or options.compare is not None:
            raise ReplayError(f"{exc}; with the live database gone, replay with --order keys"
                              " --into another") from exc
        logger.warning("live database unreachable: replaying without its record",
                       extra={"error": str(exc)})
        return LiveRun(None, (), ()), None
    try:
        return read_live_run(conn), identity(conn)
    finally:
        conn.close()


def _apply_all(conn, plan: ReplayPlan, archive: ArchiveAggregates, oversized: dict[str, str],
               thresholds: Thresholds, started_at: datetime, report: ReplayReport,
               clock: _Stopwatch, *, files_prefix: str, spark_ms: int, chunk_prefix: str) -> None:
    """Apply the chunks in plan order; chunk n+1 is assembled while chunk n is in PostgreSQL.

    ``apply_chunk`` spends most of its time waiting for the server (psycopg2 releases the GIL
    then), so assembling the next chunk's Python objects on a thread meanwhile is nearly free.
    """
    share = round(spark_ms / max(1, len(plan.chunks)))

    def assembled(key: str) -> BatchResult:
        if key in oversized:
            return BatchResult({}, {}, {key: oversized[key]}, {})
        with clock("assemble"):
            return archive.chunk(key)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay-assemble") as pool:
        upcoming = {0: pool.submit(assembled, plan.chunks[0].key)} if plan.chunks else {}
        for i, chunk in enumerate(plan.chunks):
            # popped: this chunk's objects go as soon as it is applied
            result = upcoming.pop(i).result()
            if i + 1 < len(plan.chunks):
                upcoming[i + 1] = pool.submit(assembled, plan.chunks[i + 1].key)
            ref = detection_state.ChunkRef(chunk.key, chunk.etag, chunk.event_time, chunk_prefix)
            if result.missing_chunks:
                raise ReplayError(f"{chunk.key}: the chunk vanished from the archive during"
                                  " the replay")
            if chunk.key in result.rejected_chunks:
                # Not for a chunk the live run applied, unless its object or the limits changed.
                detection_state.record_rejected_chunk(
                    conn, ref, result.rejected_chunks[chunk.key], "")
                logger.warning("chunk rejected whole by the replay", extra={
                    "chunk_key": chunk.key, "reason": result.rejected_chunks[chunk.key]})
                report.chunks_rejected += 1
                continue
            aggregates = result.aggregates[chunk.key]
            with clock("apply_chunk"):
                try:
                    detection_state.apply_chunk(conn, ref, aggregates, y_start_time=started_at,
                                                thresholds=thresholds, spark_ms=share,
                                                detections_prefix=files_prefix,
                                                prepared=result.prepared[chunk.key])
                except OutOfTurn as exc:
                    raise ReplayError(
                        f"{exc}: the live record settles no such number (was it changed by"
                        " hand?); replay with --order keys") from exc
                except DuplicateNumber as exc:  # --order keys: a copy, as live would see it
                    detection_state.record_rejected_chunk(conn, ref, str(exc), "",
                                                          duplicate_of=exc.holder)
                    logger.warning("duplicate sequence number", extra={
                        "chunk_key": chunk.key, "holder": exc.holder})
                    report.chunks_rejected += 1
                    continue
            failpoint("replay_apply")
            report.chunks_applied += 1
            report.rows_good += aggregates.rows_good
            report.rows_rejected += aggregates.rows_rejected
