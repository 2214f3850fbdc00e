"""``make bench``: the figures of docs/performance.md, on the local stack with the real processes.

One run, in this order (each phase on its own fresh database of one local stack):
1. backlog: the producer writes the whole data set at ``--interval 0`` with no worker running;
   once every chunk message is queued, the worker (``python -m spark_detector run``) starts
   and drains it. Rows/s from the first receive to the last commit, with the worker's own
   per-stage timings ("batch done" log lines);
2. nominal: the worker is started and ready, then the producer streams the same data set at
   ``--interval`` (1 s); per chunk, S3 put -> commit, and the cost of each chunk against its
   position;
3. memory: the worker's process tree is sampled during both phases (psutil);
4. baseline: after the worker has stopped, the same chunk objects are recomputed from all rows
   so far after each chunk, with Spark (``bench.baseline``), in this process.
Writes ``results.json`` and the plots under ``bench/results/<UTC timestamp>/`` and prints a table.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import psutil
import psycopg2

from bench import measure, plots
from bench.memory import RssSampler
from infra.local import postgres
from infra.local.demo import count_rows, sample_data
from infra.local.stack import REPO_ROOT, LocalServices, poll_until, stop_process, wait_for_line
from spark_detector.config import WorkerSettings

FULL_ROWS, FULL_ROWS_PER_CHUNK = 594_643, 10_000
QUICK_ROWS, QUICK_ROWS_PER_CHUNK = 12_000, 2_000


class BenchError(RuntimeError):
    """A phase of the bench did not complete; the message names the log to read."""


@dataclass(frozen=True)
class BenchConfig:
    rows: int
    rows_per_chunk: int
    interval_s: float
    quick: bool
    results_dir: Path  # this run's output folder
    work_dir: Path  # the stack's logs and embedded PostgreSQL
    data_root: Path  # generated data, cached (shared with `make demo`)
    baseline: bool = True

    @property
    def chunks(self) -> int:
        return -(-self.rows // self.rows_per_chunk)


def poll(condition: Callable[[], object], timeout: float, what: str,
         alive: subprocess.Popen | None = None, log: Path | None = None,
         every: float = 0.2) -> object:
    return poll_until(condition, timeout, what, process=alive, log=log, every=every,
                      error=BenchError)


def queue_visible(sqs, url: str) -> int:
    attrs = sqs.get_queue_attributes(QueueUrl=url,
                                     AttributeNames=["ApproximateNumberOfMessages"])
    return int(attrs["Attributes"]["ApproximateNumberOfMessages"])


def applied_count(url: str) -> int:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('processed_chunks') IS NOT NULL")
        if not cur.fetchone()[0]:
            count = 0
        else:
            cur.execute("SELECT count(*) FROM processed_chunks")
            count = cur.fetchone()[0]
    conn.close()
    return count


def read_chunks(url: str) -> list[measure.ChunkRow]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT chunk_key, apply_order, rows_good + rows_rejected, event_time,"
                    " applied_at, apply_ms, spark_ms FROM processed_chunks ORDER BY apply_order")
        rows = [measure.ChunkRow(*row) for row in cur.fetchall()]
    conn.close()
    return rows


def detection_counts(url: str) -> dict[str, int]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT pattern_id, count(*) FROM detected_patterns GROUP BY 1 ORDER BY 1")
        counts = dict(cur.fetchall())
    conn.close()
    return counts


class Phase:
    """One worker run against its own fresh database, with its log and memory samples."""

    def __init__(self, name: str, stack: LocalServices, server_url: str) -> None:
        self.name = name
        self.stack = stack
        self.database_url = postgres.recreate_database(server_url, f"bench_{name}")
        # a short long-poll so that a stop request is seen quickly
        self.env = stack.env(DATABASE_URL=self.database_url, WORKER_WAIT_TIME_SECONDS="1")
        self.worker_log = stack.logs / f"bench-{name}-worker.log"
        self.producer_log = stack.logs / f"bench-{name}-producer.log"
        self.worker: subprocess.Popen | None = None

    def producer(self, transactions: Path, importance: Path, config: BenchConfig,
                 interval: float, from_start: bool) -> subprocess.Popen:
        args = [sys.executable, "-m", "producer", "stream", str(transactions),
                "--importance", str(importance), "--rows-per-chunk", str(config.rows_per_chunk),
                "--interval", str(interval)]
        if from_start:
            args.append("--from-start")
        with self.producer_log.open("wb") as log:
            return subprocess.Popen(args, cwd=REPO_ROOT, env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def queue_backlog(self, transactions: Path, importance: Path, config: BenchConfig) -> None:
        """The whole data set streamed at once, with no worker running, every message queued."""
        _, sqs = self.stack.clients()
        producer = self.producer(transactions, importance, config, interval=0, from_start=False)
        if producer.wait(timeout=600) != 0:
            raise BenchError(f"{self.name}: the producer failed; see {self.producer_log}")
        poll(lambda: queue_visible(sqs, self.stack.resources.queue_url) >= config.chunks, 180,
             f"{self.name}: {config.chunks} chunk messages queued")

    def start_worker(self, append: bool = False) -> subprocess.Popen:
        with self.worker_log.open("ab" if append else "wb") as log:
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "spark_detector", "run"], cwd=REPO_ROOT, env=self.env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self.worker

    def wait_applied(self, chunks: int, timeout: float) -> None:
        poll(lambda: applied_count(self.database_url) >= chunks, timeout,
             f"{self.name}: {chunks} chunks applied", self.worker, self.worker_log)

    def stop_worker(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            rc = stop_process(self.worker, timeout=120)
            if rc != 0:
                raise BenchError(f"{self.name}: the worker exited with {rc}; see "
                                 f"{self.worker_log}")

    def batches(self) -> list[dict]:
        with self.worker_log.open(encoding="utf-8", errors="replace") as log:
            return measure.batch_lines(log)


def run_backlog(stack: LocalServices, server_url: str, config: BenchConfig,
                transactions: Path, importance: Path) -> tuple[dict, RssSampler, Phase]:
    phase = Phase("backlog", stack, server_url)
    phase.queue_backlog(transactions, importance, config)
    worker = phase.start_worker()
    try:
        with RssSampler(worker.pid, label="backlog") as memory:
            phase.wait_applied(config.chunks, timeout=900)
            phase.stop_worker()
    finally:
        phase.stop_worker()
    return measure.backlog_figures(phase.batches(), read_chunks(phase.database_url)), memory, phase


def start_mid_stream(database_url: str, chunks_before: int) -> None:
    """A fresh database for a stream whose first ``chunks_before`` chunks are not its business.

    The producer keeps numbering across ``--from-start`` (the nominal phase's chunks follow
    the backlog phase's in the same bucket), and the worker applies in production order: it
    would take the earlier chunks from S3 first. Settling their numbers as skipped, as an
    operator starting a database mid-stream would, makes the phase measure its own chunks.
    """
    from spark_detector import db, detection_state

    conn = db.connect(database_url)
    # one "skipped" warning per number would bury the bench's own progress lines
    logging.getLogger(detection_state.__name__).setLevel(logging.ERROR)
    try:
        db.migrate(conn)
        for seq in range(1, chunks_before + 1):
            detection_state.skip_seq(conn, seq, reason="bench: this phase starts mid-stream",
                            decided_by="bench")
    finally:
        conn.close()


def run_nominal(stack: LocalServices, server_url: str, config: BenchConfig,
                transactions: Path, importance: Path) -> tuple[list, RssSampler, Phase]:
    phase = Phase("nominal", stack, server_url)
    start_mid_stream(phase.database_url, config.chunks)
    worker = phase.start_worker()
    producer = None
    try:
        with RssSampler(worker.pid, label="nominal") as memory:
            wait_for_line(phase.worker_log, 0, "worker started", worker, timeout=300)
            # --from-start: the backlog phase streamed this file already (same bytes, new names)
            producer = phase.producer(transactions, importance, config,
                                      interval=config.interval_s, from_start=True)
            phase.wait_applied(config.chunks, timeout=config.chunks * config.interval_s + 600)
            if producer.wait(timeout=60) != 0:
                raise BenchError(f"nominal: the producer failed; see {phase.producer_log}")
            phase.stop_worker()
    finally:
        if producer is not None and producer.poll() is None:
            stop_process(producer, timeout=30)
        phase.stop_worker()
    return read_chunks(phase.database_url), memory, phase


def download_chunks(s3, bucket: str, keys: list[str], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for key in keys:
        path = folder / Path(key).name
        s3.download_file(bucket, key, str(path))
        paths.append(path)
    return paths


def run_baseline_phase(paths: list[Path], importance: Path) -> dict:
    from bench.baseline import run_baseline
    from spark_detector.detection_state import Thresholds
    from spark_detector.spark_session import build_spark

    spark = build_spark(app_name="bench_baseline")
    spark.sparkContext.setLogLevel("ERROR")
    try:
        return run_baseline(spark, paths, importance, Thresholds())
    finally:
        spark.stop()


def machine() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def versions(database_url: str) -> dict:
    java = subprocess.run(["java", "-version"], capture_output=True, text=True)
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SHOW server_version")
        pg = cur.fetchone()[0]
    conn.close()
    packages = {}
    for name in ("pyspark", "boto3", "moto", "psycopg2-binary", "pyarrow", "psutil",
                 "matplotlib"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {"python": platform.python_version(),
            "java": (java.stderr or java.stdout).splitlines()[0] if java.returncode == 0 else None,
            "postgresql": pg, **packages}


def git_commit() -> dict:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def run(config: BenchConfig) -> dict:
    started = time.monotonic()
    transactions, importance = sample_data(config.data_root, config.rows)
    transactions, importance = transactions.resolve(), importance.resolve()
    rows_in_file = count_rows(transactions)
    if rows_in_file != config.rows:
        raise BenchError(f"{transactions}: {rows_in_file} rows, expected {config.rows}")
    results: dict = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {"quick": config.quick, "rows": config.rows,
                   "rows_per_chunk": config.rows_per_chunk, "chunks": config.chunks,
                   "interval_s": config.interval_s, "data": str(transactions),
                   "worker_max_batch_chunks": int(os.environ.get(
                       "WORKER_MAX_BATCH_CHUNKS", WorkerSettings.max_batch_chunks)),
                   "worker_batch_window_s": float(os.environ.get(
                       "WORKER_BATCH_WINDOW_SECONDS", WorkerSettings.batch_window_seconds))},
        "machine": machine(),
        "git": git_commit(),
    }
    with LocalServices.start(config.work_dir, database="bench") as stack:
        server_url = postgres.with_database(stack.database_url, "postgres")
        results["versions"] = versions(stack.database_url)
        print(f"[bench] backlog: {config.chunks} chunks queued, then the worker drains them",
              flush=True)
        backlog, backlog_memory, _ = run_backlog(stack, server_url, config, transactions,
                                                 importance)
        results["backlog"] = backlog
        print(f"[bench] nominal: the producer at one chunk per {config.interval_s} s",
              flush=True)
        chunks, nominal_memory, nominal = run_nominal(stack, server_url, config, transactions,
                                                      importance)
        batches = nominal.batches()
        results["nominal"] = {**measure.latency_figures(chunks),
                              "batch_sizes": [len(b["keys"]) for b in batches]}
        results["cost"] = measure.cost_figures(chunks, measure.chunk_batch_sizes(batches))
        results["detections_per_pattern"] = detection_counts(nominal.database_url)
        memories = (backlog_memory, nominal_memory)
        results["memory"] = {
            "peak_total_bytes": max(m.peak_total for m in memories),
            "peak_bytes": {part: max(m.peaks[part] for m in memories)
                           for part in RssSampler.PARTS},
            "phases": [m.figures() for m in memories],
        }
        s3, _ = stack.clients()
        paths = download_chunks(s3, stack.bucket, [c.chunk_key for c in chunks],
                                config.work_dir / "baseline-chunks")
    if config.baseline:
        print(f"[bench] baseline: recompute from all rows after each of {len(paths)} chunks",
              flush=True)
        baseline = run_baseline_phase(paths, importance)
        ours = results["cost"]["total_ms"]
        baseline["ratio_at_last_chunk"] = round(baseline["per_chunk_ms"][-1] / ours[-1], 1)
        baseline["ratio_last10_first10"] = measure.edge_ratio(baseline["per_chunk_ms"])
        results["baseline"] = baseline
    else:
        results["baseline"] = {"per_chunk_ms": [], "skipped": True}
    results["targets"] = measure.target_checks(results)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["bench_wall_s"] = round(time.monotonic() - started, 1)

    config.results_dir.mkdir(parents=True, exist_ok=True)
    written = [plots.latency_plot(results, config.results_dir),
               plots.backlog_plot(results, config.results_dir),
               plots.cost_plot(results, config.results_dir),
               plots.memory_plot({m.label: m.samples for m in memories}, config.results_dir)]
    results["plots"] = [p.name for p in written]
    (config.results_dir / "results.json").write_text(
        json.dumps(results, indent=2, default=str) + "\n")
    return results


def format_table(results: dict, results_dir: Path) -> str:
    b, n, c = results["backlog"], results["nominal"], results["cost"]
    base, mem, targets = results["baseline"], results["memory"], results["targets"]
    cfg = results["config"]

    def verdict(name: str) -> str:
        t = targets[name]
        if t["met"] is None:
            return ""
        return "met" if t["met"] else f"MISSED ({t['measured_over_target']}x target)"

    last = cfg["chunks"]
    rows = [
        ("backlog drain", f"{b['rows_per_s']:,} rows/s", ">= 50,000", verdict(
            "backlog_rows_per_s")),
        ("  micro-batches", " ".join(map(str, b["batch_sizes"])), "", ""),
        ("latency p50", f"{n['latency_s']['p50']:.3f} s", "<= 1 s", verdict("latency_p50_s")),
        ("latency p90 / p99 / max",
         f"{n['latency_s']['p90']:.3f} / {n['latency_s']['p99']:.3f} / {n['latency_s']['max']:.3f}"
         " s", "p99 <= 2.5 s", verdict("latency_p99_s")),
        ("cost last10/first10 (apply)", f"{c['apply_ratio_last10_first10']}", "", ""),
        ("cost last10/first10 (total)", f"{c['total_ratio_last10_first10']}", "", ""),
        (f"cost chunk {c['last_full_chunk']}/5 (last full)", f"{c['chunk_last_full_vs_5']}"
         f" (apply {c['apply_chunk_last_full_vs_5']}; chunk {last}/5 {c['chunk_last_vs_5']})",
         "<= 1.2", verdict("cost_last_full_chunk_vs_5")),
        ("memory peak (total)", f"{mem['peak_total_bytes'] / 1024**2:,.0f} MiB", "< 2048 MiB",
         verdict("memory_peak_bytes")),
        ("  python / jvm / py workers", " / ".join(
            f"{mem['peak_bytes'][p] / 1024**2:,.0f}" for p in ("python", "jvm", "python_workers"))
         + " MiB", "", ""),
    ]
    if not base.get("skipped"):
        rows.append((f"baseline chunk {last} vs ours",
                     f"{base['per_chunk_ms'][-1]:,.0f} ms vs {c['total_ms'][-1]:,.0f} ms",
                     "", f"{base['ratio_at_last_chunk']}x"))
    width = max(len(r[0]) for r in rows)
    lines = [f"bench: {cfg['chunks']} chunks x {cfg['rows_per_chunk']:,} rows "
             f"({cfg['rows']:,} rows), {results['bench_wall_s']} s -> {results_dir}"]
    lines += [f"{a:<{width}}  {b_:<34} {t:<13} {v}".rstrip() for a, b_, t, v in rows]
    return "\n".join(lines)


def default_config(quick: bool, results_dir: Path | None = None,
                   work_dir: Path | None = None, data_root: Path | None = None,
                   interval_s: float = 1.0, baseline: bool = True) -> BenchConfig:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return BenchConfig(
        rows=QUICK_ROWS if quick else FULL_ROWS,
        rows_per_chunk=QUICK_ROWS_PER_CHUNK if quick else FULL_ROWS_PER_CHUNK,
        interval_s=interval_s, quick=quick,
        results_dir=results_dir or REPO_ROOT / "bench" / "results" / stamp,
        work_dir=(work_dir or REPO_ROOT / ".local" / "bench").resolve(),
        data_root=(data_root or REPO_ROOT / ".local").resolve(),
        baseline=baseline,
    )

