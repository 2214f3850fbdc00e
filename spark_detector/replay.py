"""`python -m spark_detector replay`: rebuild state and detections from the chunk archive.

The chunk archive in S3 is the source of truth. A replay:

1. reads the live run's record (``processed_chunks`` apply order, ``rejected_chunks``, the
   sequence numbers settled without their chunk, the detections) and lists the chunk prefix;
   ``replay_plan.plan_chunks`` picks the chunks and their order (the recorded apply order, or
   key order for a database that is gone), skipping the chunks the live run rejected whole;
2. runs ONE Spark job over all of them - ``spark_job.fetch_chunks`` and ``aggregate_chunks``,
   the worker's own fetch / parse / validate / aggregate query, so rows are validated exactly
   as live - which yields every chunk's pair aggregates, the chunks spread over the
   executors. The result stays one compact Arrow table on the driver, turned into one
   chunk's ``ChunkAggregates`` at a time (``spark_job.assemble_batch``) just before that chunk
   is applied, so the driver holds Python objects for two chunks at most;
3. settles the numbers the live run settled without their chunk, as it recorded them
   (``settle_like_live``), then applies the chunks one by one, in the planned order, with
   ``detection_state.apply_chunk`` into the target database or schema - a chunk applied
   late live is applied late here too, at its recorded place: the engine's own
   state update, rules at every chunk boundary for the merchants the chunk touched,
   emit-once and detection numbering. The replay is therefore the live semantics by
   construction, not a second implementation of them;
4. optionally publishes the detection files under another prefix, and compares the result
   with the live detections (added, removed, fired after another chunk).

It never writes to the live tables or the live detection prefix, except with ``--replace``
(rebuild the live database after a loss, ``rebuild.py``), which refuses while any worker
holds the worker lock (``db.try_worker_lock``), keeps every worker out while it is
unfinished, and installs its result in one transaction. Every error a replay expects ends it
with one line and an exit code (``__main__.cmd_replay``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import psycopg2.extensions
import pyarrow as pa
import pyarrow.compute as pc
from botocore.exceptions import ClientError
from psycopg2 import sql

from chunk_contract.layout import chunk_seq
from chunk_contract.listing import list_chunks
from spark_detector import db, detection_state, outbox
from spark_detector.batch_result import BatchResult, assemble_batch, weight_table
from spark_detector.chunk_aggregates import WeightKey
from spark_detector.config import WorkerSettings
from spark_detector.failpoints import failpoint
from spark_detector.ordering import DuplicateNumber, OutOfTurn
from spark_detector.parsing import ReferenceRejected, iter_customer_importance
from spark_detector.publish import publish_pending
from spark_detector.rebuild import ENGINE_TABLES, REBUILD_SCHEMA, LiveRebuild, adopt_live_files
from spark_detector.reference_weights import (
    ACCESS_DENIED_HINT,
    access_denied,
    check_reference_size,
    compute_weights,
)
from spark_detector.replay_plan import (
    RECORDED,
    ArchivedChunk,
    DetectionChange,
    FiredDetection,
    RecordedChunk,
    ReplayError,
    ReplayPlan,
    ReplayRefused,
    Target,
    changed_rules,
    check_publish_prefix,
    compare_detections,
    compare_summary,
    parse_target,
    plan_chunks,
    render_compare_csv,
    thresholds_with_rules,
    unsettled_gaps,
)
from spark_detector.spark_job import FetchSpec, aggregate_chunks, fetch_chunks
from spark_detector.spark_session import EXIT_ON_OOM
from spark_detector.worker import size_rejection

logger = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class RejectedRecord:
    key: str
    reason: str
    quarantine_key: str
    etag: str
    event_time: datetime | None
    duplicate_of: str | None = None  # the chunk holding its sequence number


@dataclass(frozen=True)
class SettledNumber:
    """A sequence number the live run settled without applying its chunk."""

    seq: int
    outcome: str  # "skipped" (by an operator) or "dead_lettered"
    chunk_key: str | None
    reason: str | None
    decided_by: str | None


@dataclass(frozen=True)
class LiveRun:
    """What the live database recorded; ``recorded`` is None when it has no engine tables."""

    recorded: tuple[RecordedChunk, ...] | None
    rejected: tuple[RejectedRecord, ...]
    detections: tuple[FiredDetection, ...]
    settled: tuple[SettledNumber, ...] = ()


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


# --- PostgreSQL ----------------------------------------------------------------------------


def connect(url: str, *, schema: str | None = None) -> psycopg2.extensions.connection:
    """A connection for the replay's writes: autocommit off, and (safe for a result that can
    be rebuilt) asynchronous commit, which saves a WAL flush per chunk."""
    options = "-c synchronous_commit=off"
    if schema is not None:
        options += f" -c search_path={schema}"
    return db.connect(url, options=options)


def _with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def ensure_database(url: str) -> None:
    """Create the URL's database on its server if it does not exist."""
    dbname = urlsplit(url).path.lstrip("/")
    if not dbname:
        raise ReplayError(f"--into {db.redact_dsn(url)}: the URL names no database")
    admin = db.connect(_with_database(url, "postgres"))
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
                logger.info("replay database created", extra={"database": dbname})
    finally:
        admin.close()


def identity(conn: psycopg2.extensions.connection) -> tuple:
    """(server start, database, schema): equal for two connections to the same tables."""
    with db.transaction(conn), conn.cursor() as cur:
        cur.execute("SELECT pg_postmaster_start_time(), current_database(), current_schema()")
        return cur.fetchone()


def _has_engine_tables(cur: psycopg2.extensions.cursor) -> bool:
    cur.execute("SELECT to_regclass('processed_chunks') IS NOT NULL"
                " AND to_regclass('detected_patterns') IS NOT NULL")
    return bool(cur.fetchone()[0])


def read_live_run(conn: psycopg2.extensions.connection) -> LiveRun:
    """The live run's apply order, rejected chunks and detections (one snapshot)."""
    with db.transaction(conn), conn.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        if not _has_engine_tables(cur):
            return LiveRun(None, (), ())
        cur.execute("SELECT chunk_key, apply_order, etag, event_time FROM processed_chunks"
                    " ORDER BY apply_order")
        recorded = tuple(RecordedChunk(*row) for row in cur.fetchall())
        cur.execute("SELECT count(*) = 1 FROM information_schema.columns WHERE table_name ="
                    " 'rejected_chunks' AND column_name = 'duplicate_of'"
                    " AND table_schema = current_schema()")
        duplicate_of = "duplicate_of" if cur.fetchone()[0] else "NULL"  # before migration 8
        cur.execute("SELECT chunk_key, reason, quarantine_key, etag, event_time,"
                    f" {duplicate_of} FROM rejected_chunks ORDER BY chunk_key")
        rejected = tuple(RejectedRecord(*row) for row in cur.fetchall())
        detections = _fired_detections(cur)
        settled: tuple[SettledNumber, ...] = ()
        cur.execute("SELECT to_regclass('sequence_marks') IS NOT NULL")
        if cur.fetchone()[0]:
            cur.execute("SELECT seq, outcome, chunk_key, reason, decided_by FROM sequence_marks"
                        " WHERE outcome IN ('skipped', 'dead_lettered') ORDER BY seq")
            settled = tuple(SettledNumber(*row) for row in cur.fetchall())
    return LiveRun(recorded, rejected, detections, settled)


def _fired_detections(cur: psycopg2.extensions.cursor) -> tuple[FiredDetection, ...]:
    cur.execute("SELECT seq, pattern_id, merchant_id, customer_name, chunk_key, apply_order"
                " FROM detected_patterns ORDER BY seq")
    return tuple(FiredDetection(*row) for row in cur.fetchall())


def fired_detections(conn: psycopg2.extensions.connection) -> tuple[FiredDetection, ...]:
    with db.transaction(conn), conn.cursor() as cur:
        return _fired_detections(cur)


def empty_engine_tables(conn: psycopg2.extensions.connection) -> None:
    """As after the migrations: no chunks, no state, the stream waiting for chunk 1 (the
    reference weight cache and schema_migrations stay)."""
    with db.transaction(conn), conn.cursor() as cur:
        cur.execute(sql.SQL("TRUNCATE {}").format(
            sql.SQL(", ").join(sql.Identifier(t) for t in (*ENGINE_TABLES, "chunk_failures"))))
        cur.execute("INSERT INTO stream_position (next_seq) VALUES (1)")


def _holds_anything(conn: psycopg2.extensions.connection) -> bool:
    with db.transaction(conn), conn.cursor() as cur:
        cur.execute("SELECT EXISTS (SELECT 1 FROM processed_chunks)"
                    " OR EXISTS (SELECT 1 FROM rejected_chunks)"
                    " OR EXISTS (SELECT 1 FROM detected_patterns)")
        return bool(cur.fetchone()[0])


def connect_target(target: Target, live_url: str) -> psycopg2.extensions.connection:
    """A connection to the target: a database (created if missing), or a schema of the live
    database (created if missing); for --replace, the rebuild's schema beside the live
    tables (``rebuild.LiveRebuild`` installs it)."""
    schema = REBUILD_SCHEMA if target.replace else target.schema
    if schema is not None:
        conn = connect(live_url, schema=schema)
        with db.transaction(conn), conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        return conn
    ensure_database(target.database_url)
    return connect(target.database_url)


def prepare_target(conn: psycopg2.extensions.connection, target: Target,
                   live_identity: tuple | None, *, reset: bool) -> None:
    """Migrate the target and make sure it is empty; refuse the live tables (but --replace)."""
    if not target.replace and live_identity is not None and identity(conn) == live_identity:
        raise ReplayRefused(f"--into: {target.describe()} holds the live tables; choose"
                            " another database or schema (or --replace to rebuild them)")
    db.migrate(conn)
    if target.replace or reset:
        empty_engine_tables(conn)
    elif _holds_anything(conn):
        raise ReplayError(f"{target.describe()} already holds a replay or a run; add"
                          " --reset to empty it first, or choose another target")


def settle_like_live(conn: psycopg2.extensions.connection, live: LiveRun, gaps: list[int],
                     prefix: str) -> None:
    """Settle in the target what the live run settled without applying a chunk - the numbers
    an operator skipped and the chunks it dead-lettered (reasons and who decided included),
    its whole-chunk rejections, and ``gaps``, numbers neither in the archive nor settled
    live - so that the engine's production order lets every planned chunk through, as it did
    live. The marks come first: a chunk that came late (skipped, then rejected when it came)
    is then recorded as late, as it was live. A duplicate sequence number is recorded as
    one, settling nothing: the number is its holder's, applied in its turn."""
    for n in live.settled:
        detection_state.settle_number(conn, n.seq, n.outcome, chunk_key=n.chunk_key,
                                      reason=n.reason, decided_by=n.decided_by)
    for r in live.rejected:
        detection_state.record_rejected_chunk(
            conn, detection_state.ChunkRef(r.key, r.etag, r.event_time, prefix), r.reason,
            r.quarantine_key, duplicate_of=r.duplicate_of)
    for seq in gaps:
        detection_state.settle_number(
            conn, seq, "skipped", reason="not in the chunk archive: the replay went on without"
            " it", decided_by="replay")


def seal_outbox(conn: psycopg2.extensions.connection) -> None:
    """Close the last partial file and mark every file as handled, without an S3 key.

    A replay that publishes nothing must leave nothing pending: a worker pointed at this
    database by mistake would otherwise write its files to the live prefix.
    """
    outbox.close_partial_file(conn)
    with db.transaction(conn), conn.cursor() as cur:
        cur.execute("UPDATE outbox_files SET written_at = clock_timestamp(), s3_key = NULL"
                    " WHERE written_at IS NULL")


# --- inputs --------------------------------------------------------------------------------


def read_importance(s3, settings: WorkerSettings, uri: str | None) -> tuple[str, bytes]:
    """(where from, bytes) of the CustomerImportance to use: ``uri`` or the live one.

    Checked as the worker checks it, before anything is touched: ``ReferenceRejected`` when
    it is too large (known before it is read), not readable, empty, not UTF-8, not CSV or
    its header lacks a column. Its rows are parsed later (``compute_weights``)."""
    named = "--importance" if uri is not None else "CustomerImportance"
    if uri is None:
        uri = f"s3://{settings.bucket}/{settings.reference_key}"
    if uri.startswith("s3://"):
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if not bucket or not key:
            raise ReplayError(f"--importance {uri}: expected s3://bucket/key")
        try:
            found = s3.get_object(Bucket=bucket, Key=key)
        except s3.exceptions.NoSuchKey as exc:
            raise ReplayError(f"{named} {uri}: no such object") from exc
        except ClientError as exc:
            if access_denied(exc):
                raise ReferenceRejected(uri, ACCESS_DENIED_HINT) from exc
            raise
        check_reference_size(uri, int(found["ContentLength"]), settings)
        where, data = uri, found["Body"].read()
    else:
        path = Path(uri)
        if not path.is_file():
            raise ReplayError(f"--importance {uri}: no such file")
        check_reference_size(str(path), path.stat().st_size, settings)
        where, data = str(path), path.read_bytes()
    iter_customer_importance(data, where)  # the whole-file checks, before the first row
    return where, data


def list_archive(s3, settings: WorkerSettings) -> list[ArchivedChunk]:
    return [
        ArchivedChunk(c.key, c.etag, c.last_modified, c.size)
        for c in list_chunks(s3, settings.bucket, settings.chunk_prefix, settings.chunk_suffix)
    ]


class ArchiveAggregates:
    """The Spark job's result for every chunk, as one Arrow table sorted by chunk key."""

    def __init__(self, table: pa.Table, weights: dict[WeightKey, Decimal]) -> None:
        self.weights = weight_table(weights)
        self.table = table.sort_by("chunk_key")
        counts = pc.value_counts(self.table["chunk_key"]).to_pylist()
        # Arrow sorts strings bytewise; UTF-8 byte order is code point order, as sorted()'s
        self.slices: dict[str, tuple[int, int]] = {}
        offset = 0
        for item in sorted(counts, key=lambda c: c["values"]):
            self.slices[item["values"]] = (offset, item["counts"])
            offset += item["counts"]

    def chunk(self, key: str) -> BatchResult:
        """One chunk's result, assembled and checked (every line counted) by the worker's code."""
        offset, length = self.slices.get(key, (0, 0))
        part = self.table.slice(offset, length)
        return assemble_batch([key], part, self.weights)


def aggregate_archive(spark, fetch_spec: FetchSpec, keys: list[str],
                      weights: dict[WeightKey, Decimal]) -> ArchiveAggregates:
    """ONE Spark job: every chunk fetched by the executors, parsed, validated, aggregated.

    The same query as a live micro-batch (``aggregate_chunks``), over the whole archive; the
    weights are applied chunk by chunk on the driver, as live.
    """
    query = aggregate_chunks(spark, fetch_chunks(spark, fetch_spec, sorted(set(keys))))
    return ArchiveAggregates(query.toArrow(), weights)


class _Background:
    """Run ``fn`` on a thread; ``result()`` joins and re-raises its error in the caller."""

    def __init__(self, fn: Callable[[], object], name: str) -> None:
        self._value: object = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name=name, daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], object]) -> None:
        try:
            self._value = fn()
        except BaseException as exc:  # handed to the caller by result()
            self._error = exc

    def result(self) -> object:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


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
    reference = _Background(functools.partial(compute_weights, data, source), "replay-reference")
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
               thresholds: detection_state.Thresholds, started_at: datetime, report: ReplayReport,
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
        upcoming = [pool.submit(assembled, c.key) for c in plan.chunks[:1]]
        for i, chunk in enumerate(plan.chunks):
            result = upcoming[i].result()
            if i + 1 < len(plan.chunks):
                upcoming.append(pool.submit(assembled, plan.chunks[i + 1].key))
            upcoming[i] = None  # this chunk's objects go as soon as it is applied
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
