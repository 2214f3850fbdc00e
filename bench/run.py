"""``make bench``: the figures of docs/performance.md, on the local stack with the real processes.

One run, in this order (each worker phase on its own fresh database of one local stack; the
data set is streamed ``--passes`` times, 300 chunks on the full data set):
1. backlog, ``--backlog-repeats`` times: the producer writes the whole stream at
   ``--interval 0`` with no worker running; once every chunk message is queued, the worker
   (``python -m spark_detector run``) starts and drains it. The steady rate (median over the
   batches after the first of each batch's rows / its time, from the worker's "batch done"
   lines), the end-to-end rate (first receive -> last commit), the start-up;
2. nominal: the worker is started and ready, then the producer streams the same data set at
   ``--interval`` (1 s); per chunk, S3 put -> commit, and the cost of each chunk against its
   position;
3. recovery: on the same worker and database, the producer streams again at the nominal rate;
   after ``--kill-after`` chunks are applied the worker's process group gets SIGKILL, a new
   worker starts at once; kill -> the chunks in flight applied, restart -> ready;
4. peer (when ``bench.peer_streaming`` is there): a Spark Structured Streaming implementation
   on the nominal phase's chunk files, all at once and fed at the nominal rate; its detections
   against the worker's;
5. baseline: after the stack has stopped, the first pass's chunks are recomputed from all rows
   so far after each chunk, with Spark (``bench.baseline``), in this process.
The worker's memory is sampled during phases 1 and 2 (psutil). Before each phase the bench
waits (up to ``--quiet-wait`` s) for the 1-minute load average to fall to ``--noisy-load`` and
records it; a phase whose load before it or after it is above that is marked noisy.
Writes ``results.json`` and the plots under ``bench/results/<UTC timestamp>/`` and prints a table.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import psutil
import psycopg2

from bench import measure, plots
from bench.memory import RssSampler
from chunk_contract.layout import CHUNK_PREFIX, start_after_seq
from chunk_contract.listing import list_chunks
from infra.local import postgres
from infra.local.demo import count_rows, sample_data
from infra.local.stack import (
    REPO_ROOT,
    LocalServices,
    poll_until,
    stop_process,
    stopped_on_exit,
    wait_for_line,
)
from spark_detector.config import WorkerSettings

FULL_ROWS, FULL_ROWS_PER_CHUNK = 594_643, 10_000
QUICK_ROWS, QUICK_ROWS_PER_CHUNK = 12_000, 2_000
# --quick drains 12 chunks: batches of 4 so that there are batches after the first
QUICK_WORKER_ENV = (("WORKER_MAX_BATCH_CHUNKS", "4"),)
PEER_MODULE = "bench.peer_streaming"
WORKER_READY = "worker started"
WORKER_WARM = "spark warm"


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
    passes: int = 1  # times the data set is streamed, as one stream
    backlog_repeats: int = 1
    noisy_load: float = 1.5  # 1-minute load average above which a figure is "noisy"
    quiet_wait_s: float = 0.0  # how long to wait for the load to fall before a phase
    kill_after: int = 10  # recovery: chunks applied before the kill
    recovery: bool = True
    peer: bool = True
    worker_env: tuple[tuple[str, str], ...] = ()  # settings the bench gives the worker

    @property
    def chunks_per_pass(self) -> int:
        return -(-self.rows // self.rows_per_chunk)

    @property
    def chunks(self) -> int:
        return self.chunks_per_pass * self.passes

    def worker_setting(self, name: str, default: object) -> str:
        return dict(self.worker_env).get(name, os.environ.get(name, str(default)))


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


def read_detections(url: str) -> list[dict]:
    """The worker's detections, in order: pattern, merchant, customer, the chunk it fired at."""
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT pattern_id, merchant_id, customer_name, chunk_key"
                    " FROM detected_patterns ORDER BY seq")
        rows = [dict(zip(("pattern_id", "merchant_id", "customer_name", "chunk_key"), row,
                         strict=True)) for row in cur.fetchall()]
    conn.close()
    return rows


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class LoadLog:
    """The machine's load average around each phase, and whether the phase was noisy.

    The bench loads the machine itself (Spark on both cores), and the 1-minute average decays
    with a one-minute time constant: right after a backlog drain it reads 2-3 on a machine
    nobody else uses. So before each phase the bench waits, up to ``quiet_wait_s``, for the
    1-minute load to fall to ``threshold`` and records the load then ("before"); the load right
    at the phase's end is recorded too ("at_end", the bench's own load included), and the
    phase's "after" is the next phase's "before" (or the final wait's). A phase is noisy when
    the 1-minute load before or after it is above ``threshold``: something other than the bench
    kept the CPU busy.
    """

    def __init__(self, threshold: float, quiet_wait_s: float) -> None:
        self.threshold = threshold
        self.quiet_wait_s = quiet_wait_s
        self.records: dict[str, dict] = {}
        self._open: dict | None = None

    def settle(self) -> tuple[list[float], float]:
        started = time.monotonic()
        while (os.getloadavg()[0] > self.threshold
               and time.monotonic() - started < self.quiet_wait_s):
            time.sleep(2)
        return load_average(), round(time.monotonic() - started, 1)

    def _close(self, after: list[float]) -> None:
        if self._open is not None:
            self._open["after"] = after
            self._open["noisy"] = measure.noisy(self._open["before"], after, self.threshold)
            self._open = None

    @contextmanager
    def phase(self, name: str) -> Iterator[dict]:
        """Settle, record "before" (closing the previous phase), run, record "at_end"."""
        before, waited = self.settle()
        self._close(before)
        record = {"before": before, "quiet_wait_s": waited, "at_end": None, "after": None,
                  "noisy": None}
        self.records[name] = record
        started = time.monotonic()
        yield record
        record["at_end"] = load_average()
        record["wall_s"] = round(time.monotonic() - started, 1)
        self._open = record

    def finish(self) -> None:
        after, _ = self.settle()
        self._close(after)

    def combined(self, names: list[str]) -> dict:
        """The load of a figure drawn from several phases: noisy when any of them was."""
        return {"phases": names,
                "noisy": any(self.records[n].get("noisy") for n in names if n in self.records)}


class Phase:
    """One worker run against its own fresh database, with its log and memory samples."""

    def __init__(self, name: str, stack: LocalServices, server_url: str,
                 worker_env: tuple[tuple[str, str], ...] = (),
                 weights_from: str | None = None) -> None:
        """``weights_from``: a database whose cached key weights the worker finds in its own
        (``copy_weight_cache``)."""
        self.name = name
        self.stack = stack
        self.database_url = postgres.recreate_database(server_url, f"bench_{name}")
        if weights_from:
            copy_weight_cache(weights_from, self.database_url)
        # a short long-poll so that a stop request is seen quickly
        self.env = stack.env(DATABASE_URL=self.database_url, WORKER_WAIT_TIME_SECONDS="1",
                             **dict(worker_env))
        self.worker_log = stack.logs / f"bench-{name}-worker.log"
        self.producer_log = stack.logs / f"bench-{name}-producer.log"
        self.worker: subprocess.Popen | None = None
        self.worker_started_at: datetime | None = None
        self.worker_log_offset = 0

    def producer(self, transactions: Path, importance: Path, config: BenchConfig,
                 interval: float, from_start: bool, passes: int = 1,
                 log: Path | None = None) -> subprocess.Popen:
        args = [sys.executable, "-m", "producer", "stream", str(transactions),
                "--importance", str(importance), "--rows-per-chunk", str(config.rows_per_chunk),
                "--interval", str(interval), "--passes", str(passes)]
        if from_start:
            args.append("--from-start")
        with (log or self.producer_log).open("wb") as out:
            return subprocess.Popen(args, cwd=REPO_ROOT, env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def queue_backlog(self, transactions: Path, importance: Path, config: BenchConfig,
                      from_start: bool = False) -> None:
        """The whole stream written at once, with no worker running, every message queued."""
        _, sqs = self.stack.clients()
        with stopped_on_exit(self.producer(transactions, importance, config, interval=0,
                                           from_start=from_start, passes=config.passes),
                             timeout=30) as producer:
            if producer.wait(timeout=900) != 0:
                raise BenchError(f"{self.name}: the producer failed; see {self.producer_log}")
        poll(lambda: queue_visible(sqs, self.stack.resources.queue_url) >= config.chunks, 600,
             f"{self.name}: {config.chunks} chunk messages queued")

    def start_worker(self, append: bool = False) -> subprocess.Popen:
        self.worker_log_offset = self.worker_log.stat().st_size if append else 0
        with self.worker_log.open("ab" if append else "wb") as log:
            self.worker_started_at = datetime.now(UTC)
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "spark_detector", "run"], cwd=REPO_ROOT, env=self.env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self.worker

    def wait_ready(self, timeout: float = 300, warm: bool = False) -> None:
        """Until the worker receives; with ``warm``, also until its Spark warm-up (which runs
        while it receives) is done: a steady-state measurement starts there."""
        wait_for_line(self.worker_log, self.worker_log_offset, WORKER_READY, self.worker,
                      timeout=timeout)
        if warm:
            wait_for_line(self.worker_log, self.worker_log_offset, WORKER_WARM, self.worker,
                          timeout=timeout)

    def startup(self) -> dict:
        """The last started worker's start-up: process start -> "spark ready", "worker started"."""
        with self.worker_log.open(encoding="utf-8", errors="replace") as log:
            log.seek(self.worker_log_offset)
            records = measure.log_records(log)
        return measure.startup_figures(records, self.worker_started_at)

    def wait_applied(self, chunks: int, timeout: float) -> None:
        poll(lambda: applied_count(self.database_url) >= chunks, timeout,
             f"{self.name}: {chunks} chunks applied", self.worker, self.worker_log)

    def stop_worker(self, check: bool = True) -> None:
        """Stop the worker; with ``check``, a worker that exits non-zero fails the bench
        (without: on the way out of an error or a signal, which must not be masked)."""
        if self.worker is not None and self.worker.poll() is None:
            rc = stop_process(self.worker, timeout=120)
            if rc != 0 and check:
                raise BenchError(f"{self.name}: the worker exited with {rc}; see "
                                 f"{self.worker_log}")

    def batches(self) -> list[dict]:
        with self.worker_log.open(encoding="utf-8", errors="replace") as log:
            return measure.batch_lines(log)


def start_mid_stream(database_url: str, chunks_before: int) -> None:
    """A fresh database for a stream whose first ``chunks_before`` chunks are not its business.

    The producer keeps numbering across passes and runs (each phase's chunks follow the
    previous phases' in the same bucket), and the worker applies in production order: it
    would take the earlier chunks from S3 first. Settling their numbers as skipped, as an
    operator starting a database mid-stream would, makes the phase measure its own chunks.
    """
    from spark_detector import db
    from spark_detector.engine import state as detection_state

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


def copy_weight_cache(source_url: str, target_url: str) -> int:
    """The key weights cached in ``source_url``'s database, copied into ``target_url``'s
    (migrated here); the number of weights copied.

    Every phase runs on a fresh database, but a real worker's database keeps its cache from
    one start to the next: only the first start of a CustomerImportance version computes the
    weights. The first phase's worker computes them (a cold start); the later phases start
    with them cached, as every later start in production would.
    """
    import io

    from spark_detector import db

    with contextlib.closing(db.connect(source_url)) as src, \
            contextlib.closing(db.connect(target_url)) as dst:
        db.migrate(dst)
        copied = 0
        with src.cursor() as read, dst.cursor() as write:
            for table in ("reference_weight_sets", "reference_weights"):
                buffer = io.StringIO()
                read.copy_expert(f"COPY {table} TO STDOUT", buffer)
                buffer.seek(0)
                write.copy_expert(f"COPY {table} FROM STDIN", buffer)
                copied = write.rowcount
        dst.commit()
        src.rollback()
    return copied


def run_backlog(stack: LocalServices, server_url: str, config: BenchConfig,
                transactions: Path, importance: Path, name: str = "backlog",
                chunks_before: int = 0, weights_from: str | None = None,
                ) -> tuple[dict, RssSampler, Phase]:
    """One backlog drain on a fresh database; ``chunks_before`` chunks are already in the
    bucket (earlier phases): the stream starts after them. ``weights_from``: a database
    whose cached key weights the worker finds (``copy_weight_cache``)."""
    phase = Phase(name.replace("-", "_"), stack, server_url, config.worker_env, weights_from)
    if chunks_before:
        start_mid_stream(phase.database_url, chunks_before)
    phase.queue_backlog(transactions, importance, config, from_start=chunks_before > 0)
    worker = phase.start_worker()
    try:
        with RssSampler(worker.pid, label=name) as memory:
            phase.wait_applied(config.chunks, timeout=900 + config.chunks * 3)
            phase.stop_worker()
    finally:
        phase.stop_worker(check=False)
    figures = measure.backlog_figures(phase.batches(), read_chunks(phase.database_url))
    return {**figures, "startup": phase.startup()}, memory, phase


def run_nominal(stack: LocalServices, server_url: str, config: BenchConfig,
                transactions: Path, importance: Path, chunks_before: int,
                weights_from: str | None = None,
                ) -> tuple[list[measure.ChunkRow], RssSampler, Phase]:
    """The stream at the nominal rate to a ready worker. The worker is left running (the
    recovery phase goes on with it); the caller stops it."""
    phase = Phase("nominal", stack, server_url, config.worker_env, weights_from)
    start_mid_stream(phase.database_url, chunks_before)
    worker = phase.start_worker()
    producer = None
    try:
        with RssSampler(worker.pid, label="nominal") as memory:
            phase.wait_ready(warm=True)  # latency in the steady state; start-up is apart
            producer = phase.producer(transactions, importance, config,
                                      interval=config.interval_s, from_start=True,
                                      passes=config.passes)
            phase.wait_applied(config.chunks, timeout=config.chunks * config.interval_s + 600)
            if producer.wait(timeout=60) != 0:
                raise BenchError(f"nominal: the producer failed; see {phase.producer_log}")
    except BaseException:
        phase.stop_worker(check=False)
        raise
    finally:
        if producer is not None and producer.poll() is None:
            stop_process(producer, timeout=30)
    return read_chunks(phase.database_url), memory, phase


def bucket_chunk_keys(s3, bucket: str, after_seq: int = 0) -> list[str]:
    """The producer's chunks in the bucket numbered above ``after_seq``, in production order."""
    return [c.key for c in list_chunks(s3, bucket, CHUNK_PREFIX,
                                       start_after=start_after_seq(CHUNK_PREFIX, after_seq + 1))
            if c.seq is not None]


def chunks_written(producer_log: Path) -> int:
    with producer_log.open(encoding="utf-8", errors="replace") as log:
        return sum(1 for r in measure.log_records(log) if r.get("message") == "chunk_written")


def measure_recovery(phase: Phase, transactions: Path, importance: Path, config: BenchConfig,
                     kill_after: int, interval_s: float, after_seq: int) -> dict:
    """Kill -9 a running, ready worker with chunks in flight, restart it at once, and time it.

    The producer streams (from the file's top, numbered after ``after_seq``) at ``interval_s``
    to ``phase.worker``. Once ``kill_after`` of these chunks are applied and a later one is
    written, the worker's whole process group (Python, JVM, Spark's Python workers) gets
    SIGKILL, as an OOM kill or a lost host would do, and a new worker starts at once. The
    producer keeps streaming: a restarted worker takes a dead worker's chunk from S3 as soon as
    the next chunk's message comes. Once the chunks in flight at the kill are applied, the
    producer stops and every chunk it wrote must be applied, in production order, once.
    """
    if phase.worker is None or phase.worker.poll() is not None:
        raise BenchError(f"{phase.name}: recovery needs a running worker")
    s3, sqs = phase.stack.clients()
    bucket, resources = phase.stack.bucket, phase.stack.resources
    url = phase.database_url
    before = {c.chunk_key for c in read_chunks(url)}

    def applied_here() -> dict[str, datetime]:
        return {c.chunk_key: c.applied_at for c in read_chunks(url) if c.chunk_key not in before}

    # enough passes never to run out before it is stopped
    producer_log = phase.stack.logs / f"bench-{phase.name}-recovery-producer.log"
    producer = phase.producer(transactions, importance, config, interval=interval_s,
                              from_start=True, passes=1000, log=producer_log)
    try:
        # kill while a chunk is in flight: applied >= kill_after and a later one written
        poll(lambda: (n := len(applied_here())) >= kill_after
             and chunks_written(producer_log) > n,
             kill_after * interval_s + 300, f"{phase.name}: {kill_after} chunks applied",
             phase.worker, phase.worker_log, every=0.1)
        killed = phase.worker
        killed_at = datetime.now(UTC)
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
        done_at_kill = applied_here()
        in_flight = [k for k in bucket_chunk_keys(s3, bucket, after_seq)
                     if k not in done_at_kill]
        phase.start_worker(append=True)
        phase.wait_ready()
        kill_to_ready_s = (datetime.now(UTC) - killed_at).total_seconds()
        poll(lambda: set(in_flight) <= set(applied_here()), 300,
             f"{phase.name}: the killed worker's chunks applied", phase.worker, phase.worker_log)
        times = applied_here()
        recovered_s = (max((times[k] - killed_at).total_seconds() for k in in_flight)
                       if in_flight else None)
    finally:
        if producer.poll() is None:
            stop_process(producer, timeout=30)
    streamed = bucket_chunk_keys(s3, bucket, after_seq)
    poll(lambda: len(applied_here()) >= len(streamed)
         and queue_visible(sqs, resources.queue_url) == 0, 300,
         f"{phase.name}: every chunk of the stream applied", phase.worker, phase.worker_log)
    order = [c.chunk_key for c in read_chunks(url) if c.chunk_key not in before]
    startup = phase.startup()
    return {
        "kill_after": kill_after, "interval_s": interval_s,
        "killed_after_applied": len(done_at_kill),
        "in_flight_at_kill": [Path(k).name for k in in_flight],
        "kill_to_in_flight_applied_s": None if recovered_s is None else round(recovered_s, 2),
        "restart_to_ready_s": startup["ready_s"],
        "kill_to_ready_s": round(kill_to_ready_s, 2),
        "restart_startup": startup,
        "chunks_streamed": len(streamed),
        "apply_order_is_production_order": order == sorted(order) == streamed,
        "applied_once": len(order) == len(set(order)) == len(streamed),
        "dlq_visible": queue_visible(sqs, resources.dlq_url),
    }


def download_chunks(s3, bucket: str, keys: list[str], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for key in keys:
        path = folder / Path(key).name
        if not path.exists():
            s3.download_file(bucket, key, str(path))
        paths.append(path)
    return paths


def peer_available() -> bool:
    try:
        return importlib.util.find_spec(PEER_MODULE) is not None
    except ImportError:
        return False


def summary_line(text: str) -> dict | None:
    """The last line of a process's output that is a JSON object (the peer's summary)."""
    records = measure.log_records(text.splitlines())
    return records[-1] if records else None


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(encoding="utf-8", errors="replace") as f:
        return measure.log_records(f)


def _run_peer(mode: str, config: BenchConfig, chunk_paths: list[Path], importance: Path,
              server_url: str, folder: Path, files_per_trigger: int,
              feed_interval_s: float | None) -> dict:
    """One run of the peer CLI; ``feed_interval_s`` None = every file there before it starts."""
    chunks_dir, out = folder / "chunks", folder / "out"
    shutil.rmtree(folder, ignore_errors=True)
    chunks_dir.mkdir(parents=True)
    out.mkdir()
    if feed_interval_s is None:
        for path in chunk_paths:
            os.link(path, chunks_dir / path.name)  # same bytes, no copy
    database_url = postgres.recreate_database(server_url, f"bench_peer_{mode}")
    stdout, stderr = folder / "stdout.log", folder / "stderr.log"
    # the peer's own limit, counted from its query's start; ours adds its start-up
    peer_timeout = 600 + len(chunk_paths) * (3 + (feed_interval_s or 0))
    args = [sys.executable, "-m", PEER_MODULE, "--chunks-dir", str(chunks_dir),
            "--importance", str(importance), "--database-url", database_url,
            "--max-files-per-trigger", str(files_per_trigger),
            "--expect-chunks", str(len(chunk_paths)), "--out", str(out),
            "--timeout", str(peer_timeout)]
    timeout = peer_timeout + 300
    feeder = None
    with stdout.open("wb") as out_log, stderr.open("wb") as err_log:
        started = time.monotonic()
        process = subprocess.Popen(args, cwd=REPO_ROOT, stdout=out_log, stderr=err_log,
                                   start_new_session=True)
    try:
        with RssSampler(process.pid, label=f"peer {mode}") as memory:
            if feed_interval_s is not None:
                from bench.peer_streaming import feed_files

                # as the worker is ready before the producer starts: feed once its query runs
                poll(lambda: (out / "peer_ready.json").exists(), 300,
                     f"peer {mode}: peer_ready.json", process, stderr)
                feeder = threading.Thread(
                    target=feed_files, args=(chunk_paths, chunks_dir, feed_interval_s),
                    name="peer-feed", daemon=True)
                feeder.start()
            rc = process.wait(timeout=timeout)
    except BaseException as exc:  # a timeout, or a signal that stops the bench
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if isinstance(exc, subprocess.TimeoutExpired | BenchError):
            raise BenchError(f"peer {mode}: did not finish; see {stderr}") from None
        raise
    if feeder is not None:
        feeder.join(timeout=60)
    summary = summary_line(stdout.read_text(errors="replace"))
    # 1: timed out before every chunk was processed (its summary says so); 2: the query failed
    if summary is None or rc not in (0, 1):
        raise BenchError(f"peer {mode}: exited with {rc}; see {stderr}")
    return {
        "summary": summary, "exit_code": rc,
        "files_per_trigger": files_per_trigger, "feed_interval_s": feed_interval_s,
        "wall_s": round(time.monotonic() - started, 1),
        "memory": memory.figures(), "memory_samples": memory,
        "detections": read_jsonl(out / "peer_detections.jsonl"),
        "chunks": read_jsonl(out / "peer_chunks.jsonl"),
        "logs": [str(stdout), str(stderr)],
    }


def run_peer_phase(config: BenchConfig, chunk_paths: list[Path], importance: Path,
                   server_url: str, worker_detections: list[dict], loads: LoadLog
                   ) -> tuple[dict, list[RssSampler]]:
    """The Structured Streaming peer (``bench.peer_streaming``) on the nominal phase's chunk
    files: all at once (throughput), then fed at the nominal rate, one file per trigger
    (latency); each run's detections against the worker's. Skipped, with the reason, when
    the peer is not there or ``--no-peer``."""
    if not config.peer:
        return {"skipped": True, "reason": "--no-peer"}, []
    if not peer_available():
        return {"skipped": True,
                "reason": f"peer not available: {PEER_MODULE} is not importable"}, []
    folder = config.work_dir / "peer"
    result: dict = {"skipped": False, "chunks": len(chunk_paths)}
    samplers = []
    batch_chunks = int(config.worker_setting("WORKER_MAX_BATCH_CHUNKS",
                                             WorkerSettings.max_batch_chunks))
    for mode, per_trigger, feed in (("throughput", batch_chunks, None),
                                    ("latency", 1, config.interval_s)):
        print(f"[bench] peer {mode}: {len(chunk_paths)} chunk files"
              + ("" if feed is None else f", one per {feed} s"), flush=True)
        with loads.phase(f"peer-{mode}") as load:
            try:
                run = _run_peer(mode, config, chunk_paths, importance, server_url,
                                folder / mode, per_trigger, feed)
            except BenchError as exc:  # the peer is a comparison: our figures still count
                print(f"[bench] {exc}", flush=True)
                result[mode] = {"failed": str(exc), "load": load}
                continue
        samplers.append(run.pop("memory_samples"))
        peer_detections, peer_chunks = run.pop("detections"), run.pop("chunks")
        run["peer_chunks_reported"] = len(peer_chunks)
        run["comparison"] = measure.compare_detections(worker_detections, peer_detections)
        run["load"] = load
        result[mode] = run
    return result, samplers


def run_baseline_phase(paths: list[Path], importance: Path) -> dict:
    from bench.baseline import run_baseline
    from spark_detector.engine.rules import Thresholds
    from spark_detector.spark.session import build_spark

    spark = build_spark(app_name="bench_baseline")
    spark.sparkContext.setLogLevel("ERROR")
    try:
        result = run_baseline(spark, paths, importance, Thresholds())
    finally:
        spark.stop()
    del result["fired"]  # tuple keys; results.json keeps the counts per pattern
    return result


def machine() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "platform": platform.platform(),
        "load_average_at_start": load_average(),
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


def config_record(config: BenchConfig, transactions: Path) -> dict:
    return {"quick": config.quick, "rows": config.rows, "rows_per_chunk": config.rows_per_chunk,
            "passes": config.passes, "chunks_per_pass": config.chunks_per_pass,
            "chunks": config.chunks, "interval_s": config.interval_s,
            "backlog_repeats": config.backlog_repeats, "noisy_load": config.noisy_load,
            "quiet_wait_s": config.quiet_wait_s, "kill_after": config.kill_after,
            "recovery": config.recovery, "peer": config.peer, "baseline": config.baseline,
            "data": str(transactions), "worker_env": dict(config.worker_env),
            "worker_max_batch_chunks": int(config.worker_setting(
                "WORKER_MAX_BATCH_CHUNKS", WorkerSettings.max_batch_chunks)),
            "worker_batch_window_s": float(config.worker_setting(
                "WORKER_BATCH_WINDOW_SECONDS", WorkerSettings.batch_window_seconds))}


def run(config: BenchConfig) -> dict:
    started = time.monotonic()
    transactions, importance = sample_data(config.data_root, config.rows)
    transactions, importance = transactions.resolve(), importance.resolve()
    rows_in_file = count_rows(transactions)
    if rows_in_file != config.rows:
        raise BenchError(f"{transactions}: {rows_in_file} rows, expected {config.rows}")
    results: dict = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": config_record(config, transactions),
        "machine": machine(),
        "git": git_commit(),
    }
    loads = LoadLog(config.noisy_load, config.quiet_wait_s)
    worker_memory: list[RssSampler] = []
    startups: list[dict] = []
    streamed = 0  # chunks in the bucket so far: each phase's stream is numbered after them
    with LocalServices.start(config.work_dir, database="bench") as stack:
        server_url = postgres.with_database(stack.database_url, "postgres")
        results["versions"] = versions(stack.database_url)

        repeats = []
        weights_from = None  # the first start computes the key weights, later ones find them
        for r in range(1, config.backlog_repeats + 1):
            name = f"backlog-{r}"
            print(f"[bench] {name}: {config.chunks} chunks queued, then the worker drains them",
                  flush=True)
            with loads.phase(name) as load:
                figures, memory, phase = run_backlog(stack, server_url, config, transactions,
                                                     importance, name=name,
                                                     chunks_before=streamed,
                                                     weights_from=weights_from)
            weights_from = weights_from or phase.database_url
            streamed += config.chunks
            worker_memory.append(memory)
            startups.append({"phase": name, **figures["startup"]})
            repeats.append({**figures, "load": load})
        results["backlog"] = {
            "steady_rows_per_s": measure.spread(r["steady_rows_per_s"] for r in repeats),
            "end_to_end_rows_per_s": measure.spread(r["rows_per_s"] for r in repeats),
            "repeats": repeats,
        }

        print(f"[bench] nominal: the producer at one chunk per {config.interval_s} s",
              flush=True)
        with loads.phase("nominal") as load:
            chunks, memory, nominal = run_nominal(stack, server_url, config, transactions,
                                                  importance, chunks_before=streamed,
                                                  weights_from=weights_from)
        streamed += config.chunks
        worker_memory.append(memory)
        try:
            startup = nominal.startup()
            startups.append({"phase": "nominal", **startup})
            batches = nominal.batches()
            results["nominal"] = {**measure.latency_figures(chunks),
                                  "batch_sizes": [len(b["keys"]) for b in batches],
                                  "startup": startup, "load": load}
            results["cost"] = measure.cost_figures(chunks, measure.chunk_batch_sizes(batches))
            results["detections_per_pattern"] = detection_counts(nominal.database_url)
            worker_detections = read_detections(nominal.database_url)

            if config.recovery:
                print(f"[bench] recovery: kill -9 after {config.kill_after} chunks at one per "
                      f"{config.interval_s} s, restart", flush=True)
                with loads.phase("recovery") as load:
                    recovery = measure_recovery(nominal, transactions, importance, config,
                                                config.kill_after, config.interval_s,
                                                after_seq=streamed)
                streamed += recovery["chunks_streamed"]
                startups.append({"phase": "recovery", "restart_after_kill": True,
                                 **recovery["restart_startup"]})
                results["recovery"] = {**recovery, "load": load}
            else:
                results["recovery"] = {"skipped": True}
            nominal.stop_worker()
        finally:
            nominal.stop_worker(check=False)

        results["startup"] = {
            "ready_s": measure.spread(s["ready_s"] for s in startups),
            "ready_s_cached": measure.spread(
                s["ready_s"] for s in startups if s.get("weights_cached")),
            "ready_s_computed": measure.spread(
                s["ready_s"] for s in startups if s.get("weights_cached") is False),
            "per_start": startups,
        }
        s3, _ = stack.clients()
        shutil.rmtree(config.work_dir / "nominal-chunks", ignore_errors=True)
        needed = (config.chunks if config.peer and peer_available()
                  else config.chunks_per_pass if config.baseline else 0)
        paths = download_chunks(s3, stack.bucket, [c.chunk_key for c in chunks[:needed]],
                                config.work_dir / "nominal-chunks")
        results["peer"], peer_memory = run_peer_phase(config, paths, importance, server_url,
                                                      worker_detections, loads)
    if config.baseline:
        first_pass = paths[:config.chunks_per_pass]
        print(f"[bench] baseline: recompute from all rows after each of {len(first_pass)} "
              "chunks", flush=True)
        with loads.phase("baseline") as load:
            baseline = run_baseline_phase(first_pass, importance)
        ours = results["cost"]["total_ms"]
        at = len(first_pass)
        baseline["at_chunk"] = at
        # ours is flat and one chunk's cost swings by +-20%: the median of the ten chunks up
        # to this one, not that chunk alone (the baseline grows, so its own last value)
        baseline["ours_ms_at_chunk"] = statistics.median(ours[max(0, at - 10):at])
        baseline["ours_ms_that_chunk_alone"] = ours[at - 1]
        baseline["ratio_at_last_chunk"] = round(baseline["last_chunk_ms"]
                                                / baseline["ours_ms_at_chunk"], 1)
        baseline["ratio_last10_first10"] = measure.edge_ratio(baseline["per_chunk_ms"])
        results["baseline"] = {**baseline, "load": load}
    else:
        results["baseline"] = {"per_chunk_ms": [], "skipped": True}
    loads.finish()
    # figures drawn from several phases: noisy when any of them was (known only now)
    results["backlog"]["load"] = loads.combined([f"backlog-{r}" for r in
                                                 range(1, config.backlog_repeats + 1)])
    results["startup"]["load"] = loads.combined([s["phase"] for s in startups])
    memory_loads = loads.combined([m.label for m in worker_memory])
    results["memory"] = {
        "peak_total_bytes": max(m.peak_total for m in worker_memory),
        "peak_bytes": {part: max(m.peaks[part] for m in worker_memory)
                       for part in RssSampler.PARTS},
        "phases": [m.figures() for m in worker_memory],
        "load": memory_loads,
    }
    results["targets"] = measure.target_checks(results)
    results["machine"]["load_average_at_end"] = load_average()
    results["phase_wall_s"] = {name: r.get("wall_s") for name, r in loads.records.items()}
    results["bench_wall_s"] = round(time.monotonic() - started, 1)

    config.results_dir.mkdir(parents=True, exist_ok=True)
    series = {m.label: m.samples for m in [*worker_memory[:1], *worker_memory[-1:],
                                           *peer_memory]}
    written = [plots.latency_plot(results, config.results_dir),
               plots.backlog_plot(results, config.results_dir),
               plots.cost_plot(results, config.results_dir),
               plots.memory_plot(series, config.results_dir)]
    results["plots"] = [p.name for p in written]
    (config.results_dir / "results.json").write_text(
        json.dumps(results, indent=2, default=str) + "\n")
    return results


def _load_note(load: dict | None) -> str:
    """'0.42 -> 0.88' (1-minute load before -> after the phase), ' NOISY' when it was."""
    if not load:
        return ""
    before, after = load.get("before"), load.get("after")
    if before is None:  # a figure drawn from several phases
        return "NOISY" if load.get("noisy") else ""
    text = f"{before[0]:.2f} -> {after[0]:.2f}" if after else f"{before[0]:.2f} ->"
    return text + (" NOISY" if load.get("noisy") else "")


def _peer_summary(summary: dict | None) -> str:
    """The peer's numeric figures, one level deep: 'rows_per_s 61234, latency_s.p50 0.41'."""
    if not summary:
        return "no summary line"
    parts = []
    for key, value in summary.items():
        inner = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, v in inner:
            if isinstance(v, int | float) and not isinstance(v, bool):
                parts.append(f"{key}{'' if sub is None else '.' + str(sub)} {v:g}")
    return ", ".join(parts)[:100]


def format_table(results: dict, results_dir: Path) -> str:
    b, n, c = results["backlog"], results["nominal"], results["cost"]
    base, mem, targets = results["baseline"], results["memory"], results["targets"]
    start, rec, peer = results["startup"], results["recovery"], results["peer"]
    cfg = results["config"]

    def verdict(name: str) -> str:
        t = targets[name]
        if t["met"] is None:
            return ""
        return "met" if t["met"] else f"MISSED ({t['measured_over_target']}x target)"

    def number(value: float | None, fmt: str = ",.0f") -> str:
        return "-" if value is None else format(value, fmt)

    def span(s: dict, fmt: str = ",.0f") -> str:
        return (f"{number(s['median'], fmt)} [{number(s['min'], fmt)}-{number(s['max'], fmt)}]"
                f" over {s['n']}")

    lat = n["latency_s"]
    rows = [
        ("backlog steady, median [min-max]", f"{span(b['steady_rows_per_s'])} rows/s",
         ">= 100,000", verdict("backlog_steady_rows_per_s"), ""),
        ("  end to end (secondary)", f"{span(b['end_to_end_rows_per_s'])} rows/s", "", "", ""),
    ]
    for i, r in enumerate(b["repeats"], 1):
        rows.append((f"  repeat {i}: steady / end to end",
                     f"{number(r['steady_rows_per_s'])} / {number(r['rows_per_s'])} rows/s"
                     f" ({len(r['batch_sizes'])} batches)", "", "", _load_note(r["load"])))
    window = (f"{c['window_last'][0]}-{c['window_last'][1]} / "
              f"{c['window_first'][0]}-{c['window_first'][1]}") if c["window_first"] else "-"
    rows += [
        ("latency p50", f"{lat['p50']:.3f} s", "<= 0.35 s", verdict("latency_p50_s"),
         _load_note(n["load"])),
        ("latency p90 / p99 / max",
         f"{lat['p90']:.3f} / {lat['p99']:.3f} / {lat['max']:.3f} s", "p99 <= 0.7 s",
         verdict("latency_p99_s"), _load_note(n["load"])),
        (f"cost chunks {window}", f"{c['total_ratio']} (apply alone {c['apply_ratio']})",
         "<= 1.1", verdict("cost_last10_vs_first10_after_warm_up"), _load_note(n["load"])),
        (f"  chunk {c['last_full_chunk']}/5, last10/first10",
         f"{c['chunk_last_full_vs_5']}, {c['total_ratio_last10_first10']}", "", "", ""),
        ("memory peak (total)", f"{mem['peak_total_bytes'] / 1024**2:,.0f} MiB", "<= 1229 MiB",
         verdict("memory_peak_bytes"), _load_note(mem["load"])),
        ("  python / jvm / py workers", " / ".join(
            f"{mem['peak_bytes'][p] / 1024**2:,.0f}" for p in ("python", "jvm", "python_workers"))
         + " MiB", "", "", ""),
        ("start-up to ready, median [min-max]", f"{span(start['ready_s'], '.1f')} s", "<= 6 s",
         verdict("startup_s"), _load_note(start["load"])),
        ("  weights cached / computed", f"{span(start['ready_s_cached'], '.1f')} s / "
         f"{span(start['ready_s_computed'], '.1f')} s", "", "", ""),
    ]
    if not rec.get("skipped"):
        rows.append(("recovery: kill -> in flight applied",
                     f"{number(rec['kill_to_in_flight_applied_s'], '.1f')} s (restart -> ready "
                     f"{number(rec['restart_to_ready_s'], '.1f')} s; "
                     f"{len(rec['in_flight_at_kill'])} in flight)", "<= 60 s",
                     verdict("recovery_s"), _load_note(rec["load"])))
    if peer.get("skipped"):
        rows.append(("peer (Structured Streaming)", f"skipped: {peer['reason']}", "", "", ""))
    else:
        for mode in ("throughput", "latency"):
            run = peer[mode]
            if "failed" in run:
                rows.append((f"peer {mode}", "FAILED (see results.json)", "", "", ""))
                continue
            cmp = run["comparison"]
            same = "same detections" if cmp["exact"] else (
                f"DIFFER {len(cmp['only_ours'])}/{len(cmp['only_peer'])}/"
                f"{len(cmp['fired_elsewhere'])} (only ours/only peer/other chunk)")
            rows.append((f"peer {mode}", _peer_summary(run["summary"]), "", same,
                         _load_note(run["load"])))
    if not base.get("skipped"):
        rows.append((f"baseline chunk {base['at_chunk']} vs ours",
                     f"{base['last_chunk_ms']:,.0f} ms vs {base['ours_ms_at_chunk']:,.0f} ms"
                     f" (medians: its {len(base['last_chunk_runs_ms'])} runs at that chunk;"
                     " our 10 chunks up to it)",
                     ">= 10x", f"{base['ratio_at_last_chunk']}x {verdict('baseline_factor')}",
                     _load_note(base["load"])))
    width = max(len(r[0]) for r in rows)
    lines = [f"bench: {cfg['chunks']} chunks ({cfg['passes']} passes of {cfg['chunks_per_pass']}"
             f" x {cfg['rows_per_chunk']:,} rows), {results['bench_wall_s']} s -> {results_dir}",
             f"load: 1-minute average before -> after each phase; NOISY above "
             f"{cfg['noisy_load']} (machine at start {results['machine']['load_average_at_start']},"
             f" at end {results['machine']['load_average_at_end']})"]
    lines += [f"{a:<{width}}  {b_:<44} {t:<12} {v:<26} {ld}".rstrip()
              for a, b_, t, v, ld in rows]
    return "\n".join(lines)


def default_config(quick: bool, results_dir: Path | None = None,
                   work_dir: Path | None = None, data_root: Path | None = None,
                   interval_s: float = 1.0, baseline: bool | None = None,
                   passes: int | None = None, backlog_repeats: int | None = None,
                   noisy_load: float = 1.5, quiet_wait_s: float | None = None,
                   kill_after: int | None = None, recovery: bool = True,
                   peer: bool = True) -> BenchConfig:
    """``make bench`` (300 chunks: the data set 5 times; 3 backlogs; baseline) or ``--quick``
    (12 chunks of 2,000 rows: 2 passes; 2 backlogs; no baseline, no quiet wait)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return BenchConfig(
        rows=QUICK_ROWS if quick else FULL_ROWS,
        rows_per_chunk=QUICK_ROWS_PER_CHUNK if quick else FULL_ROWS_PER_CHUNK,
        interval_s=interval_s, quick=quick,
        results_dir=results_dir or REPO_ROOT / "bench" / "results" / stamp,
        work_dir=(work_dir or REPO_ROOT / ".local" / "bench").resolve(),
        data_root=(data_root or REPO_ROOT / ".local").resolve(),
        baseline=(not quick) if baseline is None else baseline,
        passes=passes or (2 if quick else 5),
        backlog_repeats=backlog_repeats or (2 if quick else 3),
        noisy_load=noisy_load,
        quiet_wait_s=(0.0 if quick else 60.0) if quiet_wait_s is None else quiet_wait_s,
        kill_after=kill_after or (3 if quick else 10),
        recovery=recovery, peer=peer,
        worker_env=QUICK_WORKER_ENV if quick else (),
    )
