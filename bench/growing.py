"""Benchmarks (b) and (c) of issue 24: the real pipeline on a stream whose customers keep growing.

    python -m bench.growing                          # 30 minutes at 1 chunk/s, then the drain
    python -m bench.growing --minutes 3 --window 30 --backlog-chunks 60   # a short check

One run, on the local stack (moto S3/SQS, the Lambda runner with the real trigger, embedded
PostgreSQL, the worker ``python -m spark_detector run`` and the producer ``python -m producer
stream``, as processes), on a data set of ``python -m producer generate --customers``
(``producer/growing.py``, cached under ``.local/data/``):

(b) the worker is started, ready and warm; the producer streams ``--minutes`` x 60 chunks of
    ``--rows-per-chunk`` rows at one per ``--interval`` second(s); the customers grow to
    ``--customers`` by the last of them. Per ``--window`` chunks (100): latency (S3 put ->
    commit) p50 / p99, the chunk queue's depth (visible + in flight, sampled every
    ``SAMPLE_EVERY_S``), the apply and the Spark time per chunk, the peak memory of the worker
    (its process tree) and of PostgreSQL (the PSS of its processes), the tables' size and the
    state's (merchant, customer) pairs, and the 1-minute load average at the window's end.
    Targets: p99 <= 1 s in every window; the queue never holds more than ``QUEUE_LIMIT``
    chunks; the last window's cost (apply + Spark share, median) <= 1.2x the first window's
    after ``--warm-up`` chunks.
(c) then, on that state: the worker is stopped, the producer writes the next
    ``--backlog-chunks`` chunks at once, the worker starts and drains them. The steady rate
    (the median over the micro-batches after the first of each batch's rows / its time, as
    ``make bench``); target >= 100,000 rows/s.

The embedded PostgreSQL gets ``--shared-buffers`` and checkpoint settings for a state of
millions of pairs (``POSTGRES_SETTINGS``; docs/performance.md); chunk objects already applied
are deleted from moto every window, so that moto's memory holds the stream's last minutes, not
all of it. Writes ``results.json`` and plots under ``bench/results/<UTC timestamp>-growing/``
(or ``--out``), a progress line per window and a table at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil
import psycopg2

from bench import measure
from bench.memory import RssSampler
from bench.run import load_average, queue_visible, read_chunks
from chunk_contract import layout
from infra.local import postgres
from infra.local.interrupt import stops_cleanly
from infra.local.stack import (
    REPO_ROOT,
    LocalServices,
    poll_until,
    stop_process,
    stopped_on_exit,
    wait_for_line,
)

SAMPLE_EVERY_S = 2.0
QUEUE_LIMIT = 5  # chunks: at 1 chunk/s, five seconds behind
TARGET_P99_S = 1.0
TARGET_COST_RATIO = 1.2
TARGET_BACKLOG_ROWS_PER_S = measure.TARGET_BACKLOG_ROWS_PER_S
TARGET_CUSTOMERS = 2_000_000
# A state of millions of pairs: the tables and indexes in memory, checkpoints far apart (each
# checkpoint makes the next write of every page a full-page image in the WAL).
POSTGRES_SETTINGS = {"shared_buffers": "2GB", "max_wal_size": "8GB",
                     "checkpoint_timeout": "15min"}
STATE_TABLES = ("pair_state", "merchant_state", "pair_count_histogram", "merchant_rule_state",
                "weight_order", "waiting_pairs", "detected_patterns", "processed_chunks")


class BenchError(RuntimeError):
    """A phase did not complete; the message names the log to read."""


@dataclass(frozen=True)
class Config:
    minutes: float
    interval_s: float
    rows_per_chunk: int
    customers: int  # distinct customers by the end of the nominal phase
    backlog_chunks: int
    window: int
    warm_up: int
    seed: int
    shared_buffers: str
    out: Path
    work_dir: Path
    data_root: Path

    @property
    def nominal_chunks(self) -> int:
        return max(1, round(self.minutes * 60 / self.interval_s))

    @property
    def file_rows(self) -> int:
        return (self.nominal_chunks + self.backlog_chunks) * self.rows_per_chunk

    @property
    def file_customers(self) -> int:
        """Customers arrive evenly over the file: so many that the nominal part reaches
        ``customers``."""
        return math.ceil(self.customers * self.file_rows
                         / (self.nominal_chunks * self.rows_per_chunk))


# --- figures (pure) --------------------------------------------------------------------------


def committed_at(records: Iterable[dict]) -> dict[str, datetime]:
    """When each chunk's transaction had committed: the time of the worker's "chunk applied"
    line, which it writes after the commit (``processed_chunks.applied_at`` is taken inside the
    transaction, one apply earlier)."""
    return {r["chunk_key"]: datetime.fromisoformat(r["timestamp"]) for r in records
            if r.get("message") == "chunk applied" and "chunk_key" in r and "timestamp" in r}


def latency_s(chunk: measure.ChunkRow, committed: Mapping[str, datetime]) -> float | None:
    """From the S3 event to the commit (to ``applied_at`` for a chunk with no log line)."""
    if chunk.event_time is None:
        return None
    return (committed.get(chunk.chunk_key, chunk.applied_at) - chunk.event_time).total_seconds()


def window_figures(chunks: Sequence[measure.ChunkRow], samples: Sequence[dict],
                   window: int, committed: Mapping[str, datetime] | None = None) -> list[dict]:
    """Per ``window`` chunks in apply order: latency (to the commit, ``committed_at``), cost and
    the samples taken while they were applied (queue depth, memory, state size, load)."""
    ordered = sorted(chunks, key=lambda c: c.apply_order)
    figures = []
    for start in range(0, len(ordered), window):
        part = ordered[start:start + window]
        latencies = [latency for latency in (latency_s(c, committed or {}) for c in part)
                     if latency is not None]
        begin, end = part[0].applied_at.timestamp(), part[-1].applied_at.timestamp()
        during = [s for s in samples if begin - SAMPLE_EVERY_S <= s["t"] <= end]
        state = [s for s in samples if "pairs" in s and s["t"] <= end + SAMPLE_EVERY_S]
        last = during[-1] if during else {}

        def peak(key: str, values: Sequence[dict] = during) -> int | None:
            present = [s[key] for s in values if s.get(key) is not None]
            return max(present) if present else None

        figures.append({
            "chunks": [start + 1, start + len(part)],
            "latency_p50_s": _percentile(latencies, 0.5),
            "latency_p99_s": _percentile(latencies, 0.99),
            "apply_ms_median": statistics.median(c.apply_ms for c in part),
            "spark_ms_median": statistics.median(c.spark_ms for c in part),
            "cost_ms_median": statistics.median(c.apply_ms + c.spark_ms for c in part),
            "queue_max": peak("queue"),
            "worker_bytes_max": peak("worker_bytes"),
            "postgres_bytes_max": peak("postgres_bytes"),
            "pairs": state[-1]["pairs"] if state else None,  # sampled less often
            "table_bytes": state[-1].get("table_bytes") if state else None,
            "load_1m": last.get("load", [None])[0],
        })
    return figures


def _percentile(values: Sequence[float], q: float) -> float | None:
    return round(measure.percentile_cont(values, q), 3) if values else None


def nominal_targets(windows: Sequence[dict], warm_up: int, window: int) -> dict:
    """The targets of (b) from the window figures (the cost compared in whole windows: the first
    one after the warm-up, and the last)."""
    p99 = [w["latency_p99_s"] for w in windows if w["latency_p99_s"] is not None]
    queue = [w["queue_max"] for w in windows if w["queue_max"] is not None]
    first = next((w for w in windows if w["chunks"][0] > warm_up), None)
    last = windows[-1] if windows else None
    ratio = (round(last["cost_ms_median"] / first["cost_ms_median"], 3)
             if first and last and first is not last and first["cost_ms_median"] else None)
    return {
        "p99_max_s": max(p99) if p99 else None,
        "p99_met": bool(p99) and max(p99) <= TARGET_P99_S,
        "queue_max": max(queue) if queue else None,
        "queue_met": bool(queue) and max(queue) <= QUEUE_LIMIT,
        "cost_windows": [first["chunks"] if first else None, last["chunks"] if last else None],
        "cost_ratio": ratio,
        "cost_met": ratio is not None and ratio <= TARGET_COST_RATIO,
    }


# --- sampling --------------------------------------------------------------------------------


def postgres_bytes(pgdata: Path | None) -> int | None:
    """Proportional set size of the embedded server's processes (shared buffers counted once)."""
    if pgdata is None:
        return None
    try:
        processes = _process_tree(_postmaster_pid(pgdata))
    except (OSError, ValueError, psutil.Error):
        return None
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += process.memory_full_info().pss
    return total


def _postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().split()[0])


def _process_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cpu_snapshot(worker_pid: int, pgdata: Path | None) -> dict:
    """CPU seconds so far (user + system): the machine's busy time, the worker's process tree
    (Python and Spark's JVM) and each process of the embedded PostgreSQL (one that ended
    meanwhile, such as an autovacuum worker, is in the machine's figure only)."""
    machine = psutil.cpu_times()
    worker = _tree_cpu_s(worker_pid)
    snapshot = {"t": time.monotonic(),
                "machine": sum(machine) - machine.idle - getattr(machine, "iowait", 0.0),
                "worker": sum(worker.values()) if worker else None, "postgres": None}
    if pgdata is not None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            snapshot["postgres_processes"] = _tree_cpu_s(_postmaster_pid(pgdata))
            snapshot["postgres"] = sum(snapshot["postgres_processes"].values())
    return snapshot


def _tree_cpu_s(pid: int) -> dict[int, float]:
    try:
        processes = _process_tree(pid)
    except psutil.Error:
        return {}
    seconds = {}
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            seconds[process.pid] = times.user + times.system
    return seconds


def cpu_figures(before: dict, after: dict, chunks: int, rows_per_chunk: int,
                cores: int) -> dict:
    """Where the drain's CPU went, per chunk, and the rate the cores allow: a drain whose cores
    are all busy is bound by its CPU per chunk, rows_per_chunk x cores / that; the apply runs
    in one PostgreSQL backend, so that backend's CPU per chunk bounds the rate whatever the
    number of cores."""
    wall = after["t"] - before["t"]

    def per_chunk_ms(name: str) -> float | None:
        if before.get(name) is None or after.get(name) is None or not chunks:
            return None
        return round((after[name] - before[name]) * 1000 / chunks, 1)

    machine = per_chunk_ms("machine")
    # the backend that applies: the PostgreSQL process that used the most CPU meanwhile
    start, end = before.get("postgres_processes") or {}, after.get("postgres_processes") or {}
    deltas = [end[pid] - start[pid] for pid in end.keys() & start.keys()]
    backend_ms = round(max(deltas) * 1000 / chunks, 1) if deltas and chunks else None
    return {
        "wall_s": round(wall, 1),
        "busy_cores": round((after["machine"] - before["machine"]) / wall, 2) if wall else None,
        "cores": cores,
        "cpu_ms_per_chunk": {"machine": machine, "worker": per_chunk_ms("worker"),
                             "postgres": per_chunk_ms("postgres"),
                             "applying_backend": backend_ms},
        "bound_by_cores_rows_per_s": (round(rows_per_chunk * cores * 1000 / machine)
                                      if machine else None),
        "bound_by_backend_rows_per_s": (round(rows_per_chunk * 1000 / backend_ms)
                                        if backend_ms else None),
    }


def state_figures(database_url: str) -> dict:
    """The state's pairs and the engine tables' size on disk (with indexes and TOAST)."""
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT coalesce(sum(customers), 0) FROM merchant_state")
        (pairs,) = cur.fetchone()
        cur.execute("SELECT relname, pg_total_relation_size(oid) FROM pg_class"
                    " WHERE relname = ANY(%s) AND relkind = 'r'", (list(STATE_TABLES),))
        sizes = dict(cur.fetchall())
    conn.close()
    return {"pairs": int(pairs), "table_bytes": sizes}


class Sampler:
    """Every ``SAMPLE_EVERY_S``: the queue's depth, the worker's and PostgreSQL's memory, the
    load; every ``state_every`` samples the state's size too (it costs a query)."""

    def __init__(self, stack: LocalServices, worker_pid: int, state_every: int = 15) -> None:
        self.stack = stack
        self.worker = RssSampler(worker_pid, every=SAMPLE_EVERY_S, label="worker")
        self.samples: list[dict] = []
        self.state_every = state_every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="growing-sampler", daemon=True)

    def _run(self) -> None:
        _, sqs = self.stack.clients()
        n = 0
        while not self._stop.is_set():
            sample = {"t": time.time(), "load": load_average(),
                      "postgres_bytes": postgres_bytes(self.stack.pgdata)}
            try:
                attrs = sqs.get_queue_attributes(
                    QueueUrl=self.stack.resources.queue_url,
                    AttributeNames=["ApproximateNumberOfMessages",
                                    "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
                sample["queue"] = (int(attrs["ApproximateNumberOfMessages"])
                                   + int(attrs["ApproximateNumberOfMessagesNotVisible"]))
            except Exception:  # a missed sample is not worth stopping the bench
                sample["queue"] = None
            if self.worker.samples:
                last = self.worker.samples[-1]
                sample["worker_bytes"] = sum(last[p] for p in RssSampler.PARTS)
            if n % self.state_every == 0:
                with contextlib.suppress(psycopg2.Error):
                    sample.update(state_figures(self.stack.database_url))
            self.samples.append(sample)
            n += 1
            self._stop.wait(SAMPLE_EVERY_S)

    def __enter__(self) -> Sampler:
        self.worker.__enter__()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.worker.__exit__(*exc)


# --- the run ---------------------------------------------------------------------------------


def growing_data(config: Config) -> tuple[Path, Path]:
    return growing_files(config.data_root, config.file_rows, config.file_customers, config.seed)


def growing_files(data_root: Path, rows: int, customers: int, seed: int) -> tuple[Path, Path]:
    """The growing data set's two files under ``data_root/data``, generated the first time."""
    folder = data_root / "data" / f"growing-{rows}-{customers}-{seed}"
    transactions, importance = folder / "transactions.csv", folder / "CustomerImportance.csv"
    if not (transactions.exists() and importance.exists()):
        print(f"[growing] generating {rows:,} rows, {customers:,}"
              f" customers into {folder} (first run only)", flush=True)
        subprocess.run([sys.executable, "-m", "producer", "generate", "--out", str(folder),
                        "--rows", str(rows), "--customers", str(customers),
                        "--seed", str(seed)],
                       cwd=REPO_ROOT, check=True)
    return transactions, importance


class Pipeline:
    """The worker and the producer on one stack and one database."""

    def __init__(self, stack: LocalServices, transactions: Path, importance: Path,
                 config: Config) -> None:
        self.stack, self.config = stack, config
        self.transactions, self.importance = transactions, importance
        self.env = stack.env(WORKER_WAIT_TIME_SECONDS="1")
        self.worker_log = stack.logs / "bench-growing-worker.log"
        self.worker: subprocess.Popen | None = None
        self.worker_log_offset = 0

    def upload_reference(self) -> None:
        """CustomerImportance where the worker reads it at start-up (the producer uploads it
        only with its first chunk, and would find it there)."""
        s3, _ = self.stack.clients()
        s3.upload_file(str(self.importance), self.stack.bucket,
                       self.env.get("REFERENCE_KEY", layout.REFERENCE_KEY))

    def start_worker(self) -> subprocess.Popen:
        self.worker_log_offset = (self.worker_log.stat().st_size if self.worker_log.exists()
                                  else 0)
        with self.worker_log.open("ab") as log:
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "spark_detector", "run"], cwd=REPO_ROOT, env=self.env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_line(self.worker_log, self.worker_log_offset, "worker started", self.worker,
                      timeout=600)
        wait_for_line(self.worker_log, self.worker_log_offset, "spark warm", self.worker,
                      timeout=600)
        return self.worker

    def stop_worker(self, check: bool = True) -> None:
        """Stop the worker; with ``check``, a worker that exits non-zero fails the bench
        (without: on the way out of an error or a signal, which must not be masked)."""
        if self.worker is not None and self.worker.poll() is None:
            rc = stop_process(self.worker, timeout=120)
            if rc != 0 and check:
                raise BenchError(f"the worker exited with {rc}; see {self.worker_log}")

    def producer(self, chunks: int, interval: float, log_name: str) -> subprocess.Popen:
        """The next ``chunks`` chunks of the file (the producer resumes where it stopped)."""
        args = [sys.executable, "-m", "producer", "stream", str(self.transactions),
                "--importance", str(self.importance), "--rows-per-chunk",
                str(self.config.rows_per_chunk), "--interval", str(interval),
                "--max-chunks", str(chunks)]
        with (self.stack.logs / log_name).open("wb") as out:
            return subprocess.Popen(args, cwd=REPO_ROOT, env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def applied(self) -> int:
        with psycopg2.connect(self.stack.database_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM processed_chunks")
            (count,) = cur.fetchone()
        conn.close()
        return count

    def prune(self, keys: Sequence[str]) -> None:
        """Delete applied chunk objects from moto (its memory; the bench never replays)."""
        s3, _ = self.stack.clients()
        for start in range(0, len(keys), 1000):
            s3.delete_objects(Bucket=self.stack.bucket, Delete={
                "Objects": [{"Key": k} for k in keys[start:start + 1000]], "Quiet": True})

    def full_evaluations(self) -> dict[str, int]:
        """The merchants the worker evaluated in full, by reason (its log lines)."""
        reasons: dict[str, int] = {}
        with self.worker_log.open(encoding="utf-8", errors="replace") as log:
            for record in measure.log_records(log):
                if record.get("message") == "merchants evaluated in full":
                    for merchant in record.get("merchants") or []:
                        reason = merchant.get("reason", "?")
                        reasons[reason] = reasons.get(reason, 0) + 1
        return reasons

    def committed_at(self) -> dict[str, datetime]:
        with self.worker_log.open(encoding="utf-8", errors="replace") as log:
            return committed_at(measure.log_records(log))

    def batches(self) -> list[dict]:
        with self.worker_log.open(encoding="utf-8", errors="replace") as log:
            log.seek(self.worker_log_offset)
            return measure.batch_lines(log)


def run_nominal(pipeline: Pipeline, config: Config) -> tuple[list[measure.ChunkRow], list]:
    chunks = config.nominal_chunks
    pipeline.upload_reference()
    worker = pipeline.start_worker()
    producer = pipeline.producer(chunks, config.interval_s, "bench-growing-producer.log")
    pruned = 0
    started = time.monotonic()
    try:
        with Sampler(pipeline.stack, worker.pid) as sampler:
            done = 0
            while done < chunks:
                if worker.poll() is not None:
                    raise BenchError(f"the worker stopped; see {pipeline.worker_log}")
                time.sleep(1)
                done = pipeline.applied()
                if done - pruned >= config.window or done == chunks:
                    rows = read_chunks(pipeline.stack.database_url)
                    pipeline.prune([c.chunk_key for c in rows[pruned:done]])
                    pruned = done
                    window = window_figures(rows[max(0, done - config.window):done],
                                            sampler.samples, config.window)[-1]
                    print(f"[growing] {done}/{chunks} chunks ({time.monotonic() - started:,.0f}"
                          f" s): last {config.window} p50 {window['latency_p50_s']} s, p99"
                          f" {window['latency_p99_s']} s, queue max {window['queue_max']},"
                          f" apply {window['apply_ms_median']} ms, spark"
                          f" {window['spark_ms_median']} ms, pairs {window['pairs']},"
                          f" load {window['load_1m']}", flush=True)
                if time.monotonic() - started > chunks * config.interval_s + 900:
                    raise BenchError(f"{chunks} chunks not applied in time; see"
                                     f" {pipeline.worker_log}")
        if producer.wait(timeout=120) != 0:
            raise BenchError("the producer failed; see bench-growing-producer.log")
    finally:
        if producer.poll() is None:
            stop_process(producer, timeout=30)
    return read_chunks(pipeline.stack.database_url), sampler.samples


def run_backlog(pipeline: Pipeline, config: Config, after: int) -> dict:
    pipeline.stop_worker()
    _, sqs = pipeline.stack.clients()
    print(f"[growing] backlog: the next {config.backlog_chunks} chunks queued with no worker",
          flush=True)
    with stopped_on_exit(pipeline.producer(config.backlog_chunks, 0,
                                           "bench-growing-backlog-producer.log"),
                         timeout=30) as producer:
        if producer.wait(timeout=1800) != 0:
            raise BenchError("the backlog producer failed; see"
                             " bench-growing-backlog-producer.log")
    poll_until(lambda: queue_visible(sqs, pipeline.stack.resources.queue_url)
               >= config.backlog_chunks, 600, "the backlog queued", error=BenchError)
    load_before = load_average()
    print("[growing] backlog: the worker drains it", flush=True)
    worker = pipeline.start_worker()
    applied_before = pipeline.applied()  # chunks applied while Spark warmed up: not in the CPU
    cpu_before = cpu_snapshot(worker.pid, pipeline.stack.pgdata)
    with RssSampler(worker.pid, every=SAMPLE_EVERY_S, label="worker backlog") as memory:
        poll_until(lambda: pipeline.applied() >= after + config.backlog_chunks,
                   900 + config.backlog_chunks * 3, "the backlog applied", process=worker,
                   log=pipeline.worker_log, error=BenchError)
    cpu_after = cpu_snapshot(worker.pid, pipeline.stack.pgdata)
    pipeline.stop_worker()
    chunks = [c for c in read_chunks(pipeline.stack.database_url) if c.apply_order > after]
    figures = measure.backlog_figures(pipeline.batches(), chunks)
    cpu = cpu_figures(cpu_before, cpu_after, after + config.backlog_chunks - applied_before,
                      config.rows_per_chunk, os.cpu_count() or 1)
    return {**figures, "cpu": cpu, "memory": memory.figures(), "load_before": load_before,
            "load_after": load_average()}


def distinct_customers(database_url: str) -> int:
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(DISTINCT customer) FROM pair_state")
        (count,) = cur.fetchone()
    conn.close()
    return count


def run(config: Config) -> dict:
    transactions, importance = growing_data(config)
    results: dict = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {**{k: str(v) if isinstance(v, Path) else v
                      for k, v in config.__dict__.items()},
                   "nominal_chunks": config.nominal_chunks, "file_rows": config.file_rows,
                   "file_customers": config.file_customers, "data": str(transactions)},
        "machine": {"cpu_count": os.cpu_count(), "memory_bytes": psutil.virtual_memory().total,
                    "load_average_at_start": load_average()},
    }
    with LocalServices.start(config.work_dir, database="bench_growing") as stack:
        if stack.pgdata is not None:
            settings = {**POSTGRES_SETTINGS, "shared_buffers": config.shared_buffers}
            postgres.apply_settings(postgres.with_database(stack.database_url, "postgres"),
                                    stack.pgdata, settings)
            results["config"]["postgres_settings"] = settings
        pipeline = Pipeline(stack, transactions, importance, config)
        try:
            print(f"[growing] nominal: {config.nominal_chunks} chunks at one per"
                  f" {config.interval_s} s", flush=True)
            chunks, samples = run_nominal(pipeline, config)
            committed = pipeline.committed_at()
            windows = window_figures(chunks, samples, config.window, committed)
            latencies = [latency_s(c, committed) for c in chunks]
            results["nominal"] = {
                "windows": windows,
                "targets": nominal_targets(windows, config.warm_up, config.window),
                "distinct_customers": distinct_customers(stack.database_url),
                "latency_s": measure.distribution([x for x in latencies if x is not None]),
                "latency_to": "commit (the worker's \"chunk applied\" line)",
                "per_chunk": [{"apply_ms": c.apply_ms, "spark_ms": c.spark_ms,
                               "latency_s": None if latency is None else round(latency, 3)}
                              for c, latency in zip(chunks, latencies, strict=True)],
                "samples": samples,
            }
            if config.backlog_chunks:
                results["backlog"] = run_backlog(pipeline, config, after=len(chunks))
                results["backlog"]["met"] = ((results["backlog"]["steady_rows_per_s"] or 0)
                                             >= TARGET_BACKLOG_ROWS_PER_S)
            results["state_at_end"] = state_figures(stack.database_url)
            # all the run's worker starts; a merchant's first evaluation is not logged
            results["full_evaluations"] = pipeline.full_evaluations()
        finally:
            pipeline.stop_worker(check=False)
    results["machine"]["load_average_at_end"] = load_average()
    config.out.mkdir(parents=True, exist_ok=True)
    results["plots"] = [p.name for p in plots(results, config.out)]
    (config.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


def plots(results: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nominal = results["nominal"]
    per_chunk = nominal["per_chunk"]
    xs = range(1, len(per_chunk) + 1)
    fig, axes = plt.subplots(5, 1, figsize=(11, 14), sharex=True)
    axes[0].plot(xs, [c["latency_s"] for c in per_chunk], lw=0.5, label="S3 put -> commit")
    centres = [sum(w["chunks"]) / 2 for w in nominal["windows"]]
    axes[0].plot(centres, [w["latency_p99_s"] for w in nominal["windows"]], "o-",
                 label="p99 per window")
    axes[0].axhline(TARGET_P99_S, color="tab:red", ls=":", label="target p99")
    axes[0].set(ylabel="latency (s)", ylim=(0, None))
    axes[1].plot(xs, [c["apply_ms"] for c in per_chunk], lw=0.5, label="apply (PostgreSQL)")
    axes[1].plot(xs, [c["spark_ms"] for c in per_chunk], lw=0.5, label="Spark job")
    axes[1].set(ylabel="ms per chunk", ylim=(0, None))
    pairs = [(w["chunks"][1], w["pairs"]) for w in nominal["windows"] if w["pairs"]]
    axes[2].plot([p[0] for p in pairs], [p[1] / 1e6 for p in pairs], "o-",
                 label="(merchant, customer) pairs")
    axes[2].set(ylabel="millions")
    for key, name in (("worker_bytes_max", "worker"), ("postgres_bytes_max", "PostgreSQL")):
        axes[3].plot(centres, [(w[key] or 0) / 1024**3 for w in nominal["windows"]], "o-",
                     label=f"{name}, peak per window")
    axes[3].set(ylabel="GiB")
    samples = [x for x in nominal["samples"] if x.get("queue") is not None]
    if samples:  # time -> chunk position, at the nominal rate
        start, interval = samples[0]["t"], results["config"]["interval_s"]
        axes[4].step([(x["t"] - start) / interval for x in samples],
                     [x["queue"] for x in samples], where="post", lw=0.8,
                     label="chunk queue: visible + in flight")
    axes[4].axhline(QUEUE_LIMIT, color="tab:red", ls=":", label="limit")
    axes[4].set(ylabel="messages", xlabel="chunk (apply order)")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle("Growing stream at the nominal rate (load: 1-minute average per window in"
                 " results.json)")
    fig.tight_layout()
    paths = [out / "growing.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)
    backlog = results.get("backlog")
    if backlog:
        rates = [r or 0 for r in backlog["per_batch_rows_per_s"]]
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.bar(range(1, len(rates) + 1), rates, label="rows / batch time")
        ax.axhline(TARGET_BACKLOG_ROWS_PER_S, color="tab:red", ls=":", label="target")
        ax.set(xlabel="micro-batch", ylabel="rows/s",
               title=f"Backlog drain at the large state: steady {backlog['steady_rows_per_s']}"
               " rows/s (median after the first batch)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out / "backlog.png")
        fig.savefig(paths[1], dpi=110)
        plt.close(fig)
    return paths


def format_table(results: dict) -> str:
    nominal, config = results["nominal"], results["config"]
    lines = [f"{'chunks':>11} {'p50 s':>6} {'p99 s':>6} {'queue':>5} {'apply':>6} {'spark':>6}"
             f" {'pairs':>10} {'worker MiB':>10} {'pg MiB':>7} {'load':>5}"]
    for w in nominal["windows"]:
        queue = "-" if w["queue_max"] is None else w["queue_max"]
        lines.append(
            f"{w['chunks'][0]:>5}-{w['chunks'][1]:<5} {w['latency_p50_s'] or 0:>6.3f}"
            f" {w['latency_p99_s'] or 0:>6.3f} {queue:>5}"
            f" {w['apply_ms_median']:>6.0f} {w['spark_ms_median']:>6.0f}"
            f" {w['pairs'] or 0:>10,} {(w['worker_bytes_max'] or 0) / 1024**2:>10,.0f}"
            f" {(w['postgres_bytes_max'] or 0) / 1024**2:>7,.0f}"
            f" {w['load_1m'] if w['load_1m'] is not None else '-':>5}")
    t = nominal["targets"]
    lines.append(f"distinct customers at the end: {nominal['distinct_customers']:,}"
                 f" (target >= {config['customers']:,})")
    lines.append(f"p99 max {t['p99_max_s']} s (<= {TARGET_P99_S}: "
                 f"{'met' if t['p99_met'] else 'MISSED'}); queue max {t['queue_max']}"
                 f" (<= {QUEUE_LIMIT}: {'met' if t['queue_met'] else 'MISSED'}); cost"
                 f" {t['cost_windows'][1]} / {t['cost_windows'][0]} = {t['cost_ratio']}"
                 f" (<= {TARGET_COST_RATIO}: {'met' if t['cost_met'] else 'MISSED'})")
    lines.append(f"merchants evaluated in full (by reason): {results.get('full_evaluations')}")
    if "backlog" in results:
        b = results["backlog"]
        lines.append(f"backlog at that state: {b['steady_rows_per_s']} rows/s steady"
                     f" ({b['batches']} batches; >= {TARGET_BACKLOG_ROWS_PER_S:,}:"
                     f" {'met' if b['met'] else 'MISSED'}); load {b['load_before'][0]} ->"
                     f" {b['load_after'][0]}")
        cpu = b.get("cpu")
        if cpu:
            per = cpu["cpu_ms_per_chunk"]
            lines.append(f"its CPU per chunk: {per['machine']} ms in all (worker {per['worker']},"
                         f" PostgreSQL {per['postgres']}, of which the applying backend"
                         f" {per['applying_backend']}), {cpu['busy_cores']} of {cpu['cores']}"
                         f" cores busy: the cores allow {cpu['bound_by_cores_rows_per_s']}"
                         f" rows/s, the applying backend {cpu['bound_by_backend_rows_per_s']}")
    return "\n".join(lines)


@stops_cleanly("bench.growing")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.growing",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0,
                        help="the nominal phase's length (default %(default)s)")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="seconds between chunks (default %(default)s)")
    parser.add_argument("--rows-per-chunk", type=int, default=10_000)
    parser.add_argument("--customers", type=int, default=TARGET_CUSTOMERS,
                        help="distinct customers by the end of the nominal phase"
                        " (default %(default)s)")
    parser.add_argument("--backlog-chunks", type=int, default=300,
                        help="the drain at the end (0: none; default %(default)s)")
    parser.add_argument("--window", type=int, default=100,
                        help="chunks per reported window (default %(default)s)")
    parser.add_argument("--warm-up", type=int, default=20,
                        help="chunks before the first window the cost is compared with"
                        " (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shared-buffers", default=POSTGRES_SETTINGS["shared_buffers"])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--work-dir", type=Path, help="default .local/bench-growing")
    parser.add_argument("--data-root", type=Path, help="default .local")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.interval <= 0 or args.rows_per_chunk < 1 or args.window < 1:
        parser.error("--minutes, --interval, --rows-per-chunk and --window must be positive")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    config = Config(
        minutes=args.minutes, interval_s=args.interval, rows_per_chunk=args.rows_per_chunk,
        customers=args.customers, backlog_chunks=args.backlog_chunks, window=args.window,
        warm_up=args.warm_up, seed=args.seed, shared_buffers=args.shared_buffers,
        out=args.out or REPO_ROOT / "bench" / "results" / f"{stamp}-growing",
        work_dir=(args.work_dir or REPO_ROOT / ".local" / "bench-growing").resolve(),
        data_root=(args.data_root or REPO_ROOT / ".local").resolve())
    if config.file_customers > config.file_rows:
        parser.error("more customers than rows")
    try:
        results = run(config)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    print(format_table(results))
    print(f"-> {config.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
