"""A peer for comparison (issue 11): the design a Databricks user would build from the original
assignment - Spark Structured Streaming over the chunk files, ``foreachBatch`` into PostgreSQL.

    python -m bench.peer_streaming --chunks-dir DIR --importance CustomerImportance.csv \\
        --database-url URL --out OUT [--max-files-per-trigger 1] [--expect-chunks N] \\
        [--timeout 600] [--trigger-ms 100] [--master local[2]] \\
        [--feed-from SRC_DIR --feed-interval 1.0]

The design, on purpose the naive one (none of the worker's ordering, outbox or failure
isolation):

- a file source, ``spark.readStream.csv(--chunks-dir)`` with an explicit all-string schema in
  BankSim's column order, the header line of each file skipped, ``maxFilesPerTrigger``, rows
  with the wrong number of fields dropped (``DROPMALFORMED``), a ``processingTime`` trigger and
  a checkpoint in a temporary folder (removed at the end);
- ``foreachBatch``: fields cleaned as docs/detection-semantics.md says (blanks, then one pair of
  single quotes), amounts checked and rounded to cents, the averaged CustomerImportance weights
  joined per (customer, merchant, category) (the worker's own key weights,
  ``spark_detector.spark.reference_weights.compute_weights``, as a cached Spark table); ONE Spark
  job aggregating per (merchant, customer): count, exact amount sum, weight sum and weighted
  count, gender of the pair's first row in the micro-batch (files
  in name order, then row order); and, in the same job (grouping sets), per file: its name,
  valid rows and modification time, which ``foreachBatch`` is not told otherwise; the result
  goes to the driver;
- then ONE PostgreSQL transaction per micro-batch: add the totals (``INSERT ... ON CONFLICT DO
  UPDATE SET n = t.n + excluded.n``), evaluate the three rules in SQL for every customer of the
  merchants the micro-batch touched, insert new detections ``ON CONFLICT DO NOTHING`` (fires at
  most once), record the micro-batch and its files. A micro-batch id already recorded is
  skipped (Spark replays a batch after a crash; the documented idempotent ``foreachBatch``).

Thresholds: ``spark_detector.engine.rules.Thresholds``, with the worker's ``PATID*``
environment overrides (``thresholds_from_env``).

Local files, not S3: there is no s3a (hadoop-aws) jar on this offline machine, so the peer
reads local copies of the very same chunk files. ``feed_files`` copies them into the watched
folder atomically (a dot-temp name, then ``os.rename``: the file source skips names starting
with a dot, so it never sees a partial file).

Differences from the worker, by design: with ``maxFilesPerTrigger`` > 1 the rules run after each
micro-batch, not after each chunk (a condition true only between two chunks of one micro-batch
is never seen; a detection fires at the micro-batch's last file); the file source orders files
by modification time (ties in listing order), not by the producer's sequence number; a chunk is
never rejected whole and rejected rows are dropped, not quarantined (a file without one valid
row is not reported at all); the columns must be in BankSim's order.

Output contract (``--out``):
- ``peer_ready.json``, written once the streaming query has started:
  ``{"startup_s", "query_started_at"}``; a caller feeding files waits for it;
- ``peer_chunks.jsonl``, one line per chunk file as its micro-batch commits: ``{"chunk_key"
  (the file's name), "file_mtime" (UTC ISO, ms: when the file appeared, as Spark lists it),
  "committed_at" (UTC ISO: when the micro-batch's PostgreSQL transaction committed),
  "batch_id", "rows" (the file's valid rows), "batch_rows",
  "batch_files", "batch_started_at" (``foreachBatch`` entered), "batch_ms" (``foreachBatch``:
  the Spark job + PostgreSQL), "spark_ms", "db_ms"}``;
- ``peer_detections.jsonl``, one line per detection: ``{"pattern_id", "merchant_id",
  "customer_name" ("" for PatId3), "chunk_key" (the micro-batch's last file, by name),
  "batch_id"}``;
- stdout: ONE JSON line (``summary``): chunks, rows, batches, ``rows_per_s`` (rows from the
  first micro-batch's trigger to the last commit), ``latency_s`` p50/p90/p99/max of
  committed_at - file_mtime, ``batch_stages_ms_p50`` (median over micro-batches of batch_ms,
  spark_ms, db_ms), ``startup_s`` (process start -> query started), detections per
  pattern, ``timed_out`` (ended before ``--expect-chunks`` were processed: ``--timeout`` or
  SIGTERM), ``stopped`` (by SIGTERM), the settings. Progress and Spark's own messages go to
  stderr.
Exit code 0 when ``--expect-chunks`` were processed (or, without it, at ``--timeout`` or on
SIGTERM), 1 when the run ended before them, 2 when the query failed (the summary is not
printed).

PostgreSQL: the tables live in their own schema (``--schema``, default ``peer_streaming``),
dropped and created again at start; nothing else in the database is touched.

``run_peer(...)`` is the same in-process (one Spark session per process: call it once).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.measure import percentile_cont

PROCESS_START = time.time()  # fallback when psutil is not installed

CHUNK_COLUMNS = ("step", "customer", "age", "gender", "zipcodeOri",
                 "merchant", "zipMerchant", "category", "amount", "fraud")
PATTERNS = ("PatId1", "PatId2", "PatId3")
STAGES = ("batch_ms", "spark_ms", "db_ms")  # per micro-batch, in peer_chunks.jsonl

SCHEMA_SQL = """
DROP SCHEMA IF EXISTS {schema} CASCADE;
CREATE SCHEMA {schema};
CREATE TABLE {schema}.pair_totals (
    merchant        text NOT NULL,
    customer        text NOT NULL,
    txn_count       bigint NOT NULL,
    amount_sum      numeric NOT NULL,
    weight_sum      numeric NOT NULL,
    weighted_count  bigint NOT NULL,
    gender          text NOT NULL,  -- of the pair's first transaction, never updated
    PRIMARY KEY (merchant, customer)
);
CREATE TABLE {schema}.batches (
    batch_id      bigint PRIMARY KEY,
    rows          bigint NOT NULL,
    committed_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE {schema}.batch_files (
    chunk_key  text PRIMARY KEY,
    batch_id   bigint NOT NULL REFERENCES {schema}.batches
);
CREATE TABLE {schema}.detections (
    pattern_id     text NOT NULL,
    merchant_id    text NOT NULL,
    customer_name  text NOT NULL,
    chunk_key      text NOT NULL,
    batch_id       bigint NOT NULL,
    detected_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (pattern_id, merchant_id, customer_name)
);
"""

UPSERT_SQL = """
INSERT INTO pair_totals AS t
    (merchant, customer, txn_count, amount_sum, weight_sum, weighted_count, gender)
VALUES %s
ON CONFLICT (merchant, customer) DO UPDATE SET
    txn_count = t.txn_count + excluded.txn_count,
    amount_sum = t.amount_sum + excluded.amount_sum,
    weight_sum = t.weight_sum + excluded.weight_sum,
    weighted_count = t.weighted_count + excluded.weighted_count
"""

# The three rules of docs/detection-semantics.md on the totals after this micro-batch, for every
# customer of the merchants it touched. Percentiles as the worker's: percentile_cont on float8.
RULES_SQL = """
WITH pairs AS (
    SELECT merchant, customer, txn_count, amount_sum, gender,
           CASE WHEN weighted_count > 0 THEN weight_sum::float8 / weighted_count END
               AS avg_weight
    FROM pair_totals
    WHERE merchant = ANY(%(merchants)s)
), merchants AS (
    SELECT merchant,
           sum(txn_count) AS total,
           count(*) FILTER (WHERE gender = 'F') AS female,
           count(*) FILTER (WHERE gender = 'M') AS male,
           percentile_cont(%(count_percentile)s::float8)
               WITHIN GROUP (ORDER BY txn_count::float8) AS p90_count,
           percentile_cont(%(weight_percentile)s::float8)
               WITHIN GROUP (ORDER BY avg_weight) AS p10_weight
    FROM pairs
    GROUP BY merchant
)
INSERT INTO detections (pattern_id, merchant_id, customer_name, chunk_key, batch_id)
SELECT found.pattern_id, found.merchant, found.customer, %(chunk_key)s, %(batch_id)s
FROM (
    SELECT 'PatId1' AS pattern_id, p.merchant, p.customer
    FROM pairs p JOIN merchants m USING (merchant)
    WHERE m.total > %(upgrade_min_total)s
      AND p.txn_count::float8 >= m.p90_count
      AND p.avg_weight <= m.p10_weight
    UNION ALL
    SELECT 'PatId2', p.merchant, p.customer
    FROM pairs p
    WHERE p.txn_count >= %(child_min_count)s
      AND p.amount_sum < %(child_max_avg_amount)s::numeric * p.txn_count
    UNION ALL
    SELECT 'PatId3', m.merchant, ''
    FROM merchants m
    WHERE m.female > %(dei_min_female)s AND m.female < m.male
) found
ON CONFLICT (pattern_id, merchant_id, customer_name) DO NOTHING
RETURNING pattern_id, merchant_id, customer_name
"""


# ---- pure helpers -------------------------------------------------------------------------

def utc_iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")


def from_iso(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def batch_chunk_key(names: Iterable[str]) -> str:
    """The chunk a micro-batch's detections are attributed to: its last file by name (the
    producer's names sort in production order)."""
    return max(names)


def summarize(chunks: Sequence[dict], detections: Sequence[dict], *, startup_s: float | None,
              first_trigger_at: float | None, timed_out: bool, **extra) -> dict:
    """The stdout summary from the ``peer_chunks.jsonl`` and ``peer_detections.jsonl`` records.

    ``first_trigger_at`` (epoch s): when the first micro-batch started; rows/s runs from there to
    the last commit. Without it, from the first micro-batch's ``foreachBatch`` entry.
    """
    latencies = [from_iso(c["committed_at"]) - from_iso(c["file_mtime"]) for c in chunks]
    rows = sum(c["rows"] for c in chunks)
    batches = sorted({c["batch_id"] for c in chunks})
    if chunks:
        last_commit = max(from_iso(c["committed_at"]) for c in chunks)
        start = first_trigger_at if first_trigger_at is not None else min(
            from_iso(c["batch_started_at"]) for c in chunks)
        span = last_commit - start
    else:
        span = None
    one_per_batch = {c["batch_id"]: c for c in chunks}.values()
    stages = {name: round(statistics.median(c[name] for c in one_per_batch), 1)
              for name in STAGES if chunks and all(name in c for c in chunks)}
    per_pattern = {p: 0 for p in PATTERNS}
    for d in detections:
        per_pattern[d["pattern_id"]] = per_pattern.get(d["pattern_id"], 0) + 1
    return {
        "chunks": len(chunks),
        "rows": rows,
        "batches": len(batches),
        "rows_per_s": round(rows / span) if span else None,
        "run_s": round(span, 3) if span is not None else None,
        "latency_s": {
            **{f"p{q}": (round(percentile_cont(latencies, q / 100), 3) if latencies else None)
               for q in (50, 90, 99)},
            "max": round(max(latencies), 3) if latencies else None,
        },
        "batch_stages_ms_p50": stages,
        "startup_s": round(startup_s, 3) if startup_s is not None else None,
        "detections": sum(per_pattern.values()),
        "detections_per_pattern": per_pattern,
        "timed_out": timed_out,
        **extra,
    }


def feed_files(src_paths: Iterable[Path | str], dest_dir: Path | str, interval_s: float = 1.0,
               stop: threading.Event | None = None) -> list[dict]:
    """Copy each file into ``dest_dir``, the first at once and then one every ``interval_s``
    seconds (on a fixed schedule, so copying time does not drift it; 0: all at once), each
    atomically: written to ``.<name>.part`` and renamed, so a folder watcher never sees a part
    of a file. Returns ``[{"chunk_key", "appeared_at" (UTC ISO)}]`` in copy order; ``stop``
    (set) ends it early."""
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    fed = []
    for n, src in enumerate(map(Path, src_paths)):
        delay = started + n * interval_s - time.monotonic()
        if delay > 0 and (stop.wait(delay) if stop is not None else time.sleep(delay)):
            break
        if stop is not None and stop.is_set():
            break
        temp = dest / f".{src.name}.part"
        shutil.copyfile(src, temp)
        os.rename(temp, dest / src.name)
        fed.append({"chunk_key": src.name, "appeared_at": utc_iso(time.time())})
    return fed


def process_start_time() -> float:
    try:
        import psutil

        return psutil.Process().create_time()
    except ImportError:
        return PROCESS_START


# ---- Spark and PostgreSQL -----------------------------------------------------------------

def clean(column: str):
    """docs/detection-semantics.md: spaces and tabs off, then one pair of single quotes."""
    from pyspark.sql import functions as F

    return F.regexp_replace(F.expr(f"trim(BOTH ' \\t' FROM `{column}`)"), "^'(.*)'$", "$1")


def chunk_stream(spark, chunks_dir: Path, max_files_per_trigger: int):
    """The file source over ``chunks_dir``: every column a string, each file's header skipped."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType, StructField, StructType

    schema = StructType([StructField(name, StringType()) for name in CHUNK_COLUMNS])
    return (
        spark.readStream.schema(schema)
        .option("header", True)
        .option("mode", "DROPMALFORMED")  # a row with the wrong number of fields
        .option("quote", "")  # no CSV quoting in chunks (docs/detection-semantics.md)
        .option("pathGlobFilter", "*.csv")
        .option("maxFilesPerTrigger", max_files_per_trigger)
        .csv(str(chunks_dir))
        .withColumn("file_name", F.col("_metadata.file_name"))
        .withColumn("file_modification_time", F.col("_metadata.file_modification_time"))
    )


def weights_frame(spark, importance: Path):
    """The key weights of the CustomerImportance file, computed as the worker does (mean per
    (customer, merchant, category), docs/detection-semantics.md), as a cached one-partition
    table to broadcast into every micro-batch's join."""
    from pyspark.sql.types import DecimalType, StringType, StructField, StructType

    from spark_detector.spark.reference_weights import compute_weights

    weights, _ = compute_weights(importance.read_bytes(), str(importance))
    schema = StructType([StructField("customer", StringType(), False),
                         StructField("merchant", StringType(), False),
                         StructField("category", StringType(), False),
                         StructField("weight", DecimalType(22, 10), False)])
    rows = [(c, m, k, w) for (c, m, k), w in sorted(weights.items())]
    frame = spark.createDataFrame(rows, schema).coalesce(1).cache()
    frame.count()
    return frame


def batch_aggregates(batch_df, weights_df):
    """The micro-batch's valid rows, weights joined, aggregated in ONE Spark job at two levels
    (grouping sets): per (merchant, customer) - ``file_name`` null - and per file - ``merchant``
    and ``customer`` null - whose ``txn_count`` is the file's valid rows (the file source tells
    ``foreachBatch`` nothing of its files). Columns: merchant, customer, file_name, txn_count,
    amount_sum, weight_sum, weighted_count, gender, file_mtime_ms."""
    from pyspark.sql import functions as F

    from spark_detector.parsing import DECIMAL_PATTERN

    rows = (
        batch_df.withColumn("row_id", F.monotonically_increasing_id())  # file order in a task
        .select(clean("customer").alias("customer"), clean("merchant").alias("merchant"),
                clean("category").alias("category"), clean("gender").alias("gender"),
                clean("amount").alias("amount_text"), "file_name", "file_modification_time",
                "row_id")
        .where((F.col("customer") != "") & (F.col("merchant") != "")
               & F.col("amount_text").rlike(f"^({DECIMAL_PATTERN})$"))
        .withColumn("amount", F.expr("try_cast(amount_text AS decimal(18,2))"))  # half-up
        .where(F.col("amount") >= 0)  # null (too large) or negative: the row is dropped
    )
    weighted = rows.join(F.broadcast(weights_df), ["customer", "merchant", "category"], "left")
    return weighted.groupingSets(
        [["merchant", "customer"], ["file_name"]], "merchant", "customer", "file_name"
    ).agg(
        F.count(F.lit(1)).alias("txn_count"),
        F.sum("amount").alias("amount_sum"),
        F.coalesce(F.sum("weight"), F.lit(0)).alias("weight_sum"),
        F.count("weight").alias("weighted_count"),
        # the gender of the pair's first row: files in name order, rows in file order
        F.min_by("gender", F.struct("file_name", "row_id")).alias("gender"),
        F.expr("unix_millis(max(file_modification_time))").alias("file_mtime_ms"),
    )


@dataclass
class PeerSink:
    """``foreachBatch``: aggregate the micro-batch, then one PostgreSQL transaction."""

    conn: object  # psycopg2 connection, search_path on the peer's schema
    weights_df: object
    thresholds: object  # spark_detector.engine.rules.Thresholds
    out_dir: Path
    chunks: list[dict] = field(default_factory=list)
    detections: list[dict] = field(default_factory=list)
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr, flush=True)

    def __call__(self, batch_df, batch_id: int) -> None:
        started = time.time()
        pairs, files = [], []
        for r in batch_aggregates(batch_df, self.weights_df).collect():
            if r.file_name is None:
                pairs.append((r.merchant, r.customer, r.txn_count, r.amount_sum, r.weight_sum,
                              r.weighted_count, r.gender))
            else:
                files.append((r.file_name, r.txn_count, r.file_mtime_ms))
        spark_done = time.time()
        if not files:
            return
        files.sort()
        rows = {name: n for name, n, _ in files}
        chunk_key = batch_chunk_key(rows)
        fired = self._commit(batch_id, pairs, list(rows), sum(rows.values()), chunk_key)
        committed = time.time()
        if fired is None:
            self.log(f"peer: batch {batch_id} was committed before, skipped")
            return
        batch = {"committed_at": utc_iso(committed), "batch_id": batch_id,
                 "batch_rows": sum(rows.values()), "batch_files": len(files),
                 "batch_started_at": utc_iso(started),
                 "batch_ms": round((committed - started) * 1000, 1),
                 "spark_ms": round((spark_done - started) * 1000, 1),
                 "db_ms": round((committed - spark_done) * 1000, 1)}
        chunks = [{"chunk_key": name, "file_mtime": utc_iso(mtime_ms / 1000), "rows": n,
                   **batch} for name, n, mtime_ms in files]
        detections = [{"pattern_id": p, "merchant_id": m, "customer_name": c,
                       "chunk_key": chunk_key, "batch_id": batch_id} for p, m, c in fired]
        self._append("peer_chunks.jsonl", chunks)
        self._append("peer_detections.jsonl", detections)
        self.chunks.extend(chunks)
        self.detections.extend(detections)
        self.log(f"peer: batch {batch_id}: {len(files)} file(s) up to {chunk_key}, "
                 f"{batch['batch_rows']} rows, {len(pairs)} pairs, {len(fired)} detection(s), "
                 f"{batch['batch_ms']} ms")

    def _commit(self, batch_id: int, pairs: list[tuple], names: list[str], rows: int,
                chunk_key: str) -> list[tuple] | None:
        """One transaction; the detections it fired, or None for a batch id done before."""
        from psycopg2.extras import execute_values

        t = self.thresholds
        with self.conn, self.conn.cursor() as cur:
            cur.execute("INSERT INTO batches (batch_id, rows) VALUES (%s, %s)"
                        " ON CONFLICT DO NOTHING RETURNING batch_id", (batch_id, rows))
            if cur.fetchone() is None:
                return None
            execute_values(cur, UPSERT_SQL, pairs, page_size=5000)
            cur.execute(RULES_SQL, {
                "merchants": sorted({p[0] for p in pairs}),
                "chunk_key": chunk_key, "batch_id": batch_id,
                "upgrade_min_total": t.upgrade_min_total,
                "count_percentile": t.upgrade_count_percentile,
                "weight_percentile": t.upgrade_weight_percentile,
                "child_min_count": t.child_min_count,
                "child_max_avg_amount": t.child_max_avg_amount,
                "dei_min_female": t.dei_min_female,
            })
            fired = sorted(cur.fetchall())
            execute_values(cur, "INSERT INTO batch_files (chunk_key, batch_id) VALUES %s",
                           [(name, batch_id) for name in names])
        return fired

    def _append(self, name: str, records: list[dict]) -> None:
        with (self.out_dir / name).open("a", encoding="utf-8") as out:
            for record in records:
                out.write(json.dumps(record) + "\n")


def reset_schema(database_url: str, schema: str):
    """A connection whose search_path is ``schema``, created afresh (dropped first)."""
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(database_url)
    with conn, conn.cursor() as cur:
        cur.execute("SET client_min_messages = warning")
        cur.execute(sql.SQL(SCHEMA_SQL).format(schema=sql.Identifier(schema)))
    with conn, conn.cursor() as cur:
        cur.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    return conn


def first_trigger_time(query, first_batch_id: int | None) -> float | None:
    """When the micro-batch ``first_batch_id`` started (its progress report's timestamp)."""
    if first_batch_id is None:
        return None
    for progress in query.recentProgress:
        if progress.batchId == first_batch_id:
            return from_iso(progress.timestamp.replace("Z", "+00:00"))
    return None


def run_peer(chunks_dir: Path | str, importance: Path | str, database_url: str,
             out_dir: Path | str, *, max_files_per_trigger: int = 1,
             expect_chunks: int | None = None, timeout_s: float = 600.0,
             trigger_ms: int = 100, master: str = "local[2]", schema: str = "peer_streaming",
             feed_from: Sequence[Path] | None = None, feed_interval_s: float = 1.0,
             thresholds=None, stop: threading.Event | None = None) -> dict:
    """The peer, in this process; returns the summary (see the module docstring).

    ``feed_from``: files copied into ``chunks_dir`` with ``feed_files`` once the query has
    started (a background thread); ``expect_chunks`` then defaults to their number. ``stop``
    (set, by a signal handler say) ends the run as the timeout would, without a failure.
    """
    from spark_detector.engine.rules import thresholds_from_env
    from spark_detector.spark.session import build_spark

    chunks_dir, out_dir = Path(chunks_dir), Path(out_dir)
    chunks_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("peer_chunks.jsonl", "peer_detections.jsonl", "peer_ready.json"):
        (out_dir / name).unlink(missing_ok=True)
    if feed_from is not None and expect_chunks is None:
        expect_chunks = len(feed_from)
    thresholds = thresholds or thresholds_from_env(os.environ)
    process_started = process_start_time()

    spark = build_spark(master=master, app_name="peer_streaming")
    spark.sparkContext.setLogLevel("ERROR")
    # a row's field count is checked only when the parser reads every column
    spark.conf.set("spark.sql.csv.parser.columnPruning.enabled", "false")
    spark.conf.set("spark.sql.streaming.numRecentProgressUpdates", "10000")
    checkpoint = Path(tempfile.mkdtemp(prefix="peer-streaming-checkpoint-"))
    conn = reset_schema(database_url, schema)
    stop_feeding = threading.Event()
    feeder = None
    try:
        weights_df = weights_frame(spark, Path(importance))
        sink = PeerSink(conn, weights_df, thresholds, out_dir)
        query = (chunk_stream(spark, chunks_dir, max_files_per_trigger).writeStream
                 .foreachBatch(sink)
                 .trigger(processingTime=f"{trigger_ms} milliseconds")
                 .option("checkpointLocation", str(checkpoint))
                 .queryName("peer_streaming")
                 .start())
        query_started = time.time()
        startup_s = query_started - process_started
        (out_dir / "peer_ready.json").write_text(json.dumps(
            {"startup_s": round(startup_s, 3), "query_started_at": utc_iso(query_started)}) + "\n")
        sink.log(f"peer: query started after {startup_s:.1f} s, watching {chunks_dir}")
        if feed_from is not None:
            feeder = threading.Thread(target=feed_files, daemon=True,
                                      args=(feed_from, chunks_dir, feed_interval_s,
                                            stop_feeding))
            feeder.start()

        deadline = time.monotonic() + timeout_s
        stop = stop or threading.Event()

        def complete() -> bool:
            return expect_chunks is not None and len(sink.chunks) >= expect_chunks

        while query.isActive and not complete() and not stop.is_set():
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        failed = not query.isActive
        error = query.exception()
        first_batch = min((c["batch_id"] for c in sink.chunks), default=None)
        first_trigger = first_trigger_time(query, first_batch)
        query.stop()
        if error is not None or failed:
            raise RuntimeError(f"the streaming query failed: {error}")
        return summarize(sink.chunks, sink.detections, startup_s=startup_s,
                         first_trigger_at=first_trigger,
                         timed_out=expect_chunks is not None and not complete(),
                         stopped=stop.is_set(), max_files_per_trigger=max_files_per_trigger,
                         trigger_ms=trigger_ms, expect_chunks=expect_chunks)
    finally:
        stop_feeding.set()
        if feeder is not None:
            feeder.join(timeout=10)
        conn.close()
        spark.stop()
        shutil.rmtree(checkpoint, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peer_streaming",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks-dir", type=Path, required=True,
                        help="the local folder the chunk files appear in (watched)")
    parser.add_argument("--importance", type=Path, required=True,
                        help="the CustomerImportance CSV (key weights)")
    parser.add_argument("--database-url", required=True,
                        help="PostgreSQL; the peer's tables go in --schema, recreated")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for peer_ready.json, peer_chunks.jsonl, "
                             "peer_detections.jsonl")
    parser.add_argument("--max-files-per-trigger", type=int, default=1)
    parser.add_argument("--expect-chunks", type=int,
                        help="stop once this many chunk files are processed")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds after the query started before giving up (default 600)")
    parser.add_argument("--trigger-ms", type=int, default=100,
                        help="processingTime trigger interval (default 100 ms)")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--schema", default="peer_streaming")
    parser.add_argument("--feed-from", type=Path,
                        help="copy this folder's *.csv (name order) into --chunks-dir once the "
                             "query has started (feed_files); --expect-chunks defaults to "
                             "their number")
    parser.add_argument("--feed-interval", type=float, default=1.0,
                        help="seconds between fed files (0: all at once; default 1)")
    args = parser.parse_args(argv)
    if args.max_files_per_trigger < 1:
        parser.error("--max-files-per-trigger must be at least 1")
    feed = sorted(args.feed_from.glob("*.csv")) if args.feed_from else None
    # SIGTERM stops like a timeout would: the query is stopped and the summary printed
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        summary = run_peer(args.chunks_dir, args.importance, args.database_url, args.out,
                           max_files_per_trigger=args.max_files_per_trigger,
                           expect_chunks=args.expect_chunks, timeout_s=args.timeout,
                           trigger_ms=args.trigger_ms, master=args.master, schema=args.schema,
                           feed_from=feed, feed_interval_s=args.feed_interval, stop=stop)
    except RuntimeError as exc:
        print(f"peer_streaming: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary), flush=True)
    return 1 if summary["timed_out"] else 0


if __name__ == "__main__":
    sys.exit(main())
