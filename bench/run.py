"""`make bench`: SPEC section 7's figures, measured on the local stack with the real processes.

Scenarios (each on a fresh database and a fresh moto server):
1. backlog: the producer streams the whole file with the worker stopped, so every chunk is
   queued; then the worker drains it. rows/s from the worker's start to the last commit, and
   the time split per stage from its per-batch log lines.
2. nominal: the worker runs first, the producer streams one chunk per second. Per chunk:
   S3 event -> commit latency, and its cost (Spark + apply) against its position.
3. memory: peak RSS of the worker's Python process and of its JVM, sampled in both runs.
4. baseline: the usual public solution, measured in this process on the same chunks —
   after each new chunk, recompute the three rules from ALL rows so far with Spark.

Writes bench/results/<UTC timestamp>/results.json and PNG plots, and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil
import psycopg2

from infra.local.demo import sample_data
from infra.local.stack import REPO_ROOT, LocalStack, stop_process, wait_for_line

FULL_ROWS = 594_643


@dataclass
class MemorySampler:
    """Peak RSS of a process (Python) and of its children (the JVM), sampled in a thread."""

    pid: int
    period_s: float = 0.2
    peak_python: int = 0
    peak_jvm: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            process = psutil.Process(self.pid)
            while not self._stop.wait(self.period_s):
                self.peak_python = max(self.peak_python, process.memory_info().rss)
                jvm = sum(c.memory_info().rss for c in process.children(recursive=True))
                self.peak_jvm = max(self.peak_jvm, jvm)
        except psutil.Error:
            return  # the worker exited

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (NumPy's default), None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def batch_lines(log: Path, offset: int) -> list[dict]:
    """The worker's "batch done" JSON lines written after `offset`."""
    lines = []
    with log.open("rb") as f:
        f.seek(offset)
        for raw in f:
            if b'"batch done"' in raw:
                lines.append(json.loads(raw))
    return lines


def chunk_rows(database_url: str) -> list[dict]:
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT apply_order, chunk_key, rows_good, spark_ms, apply_ms,"
            " extract(epoch FROM applied_at)::float8, extract(epoch FROM event_time)::float8"
            " FROM processed_chunks ORDER BY apply_order")
        names = ("order", "key", "rows", "spark_ms", "apply_ms", "applied_at", "event_time")
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def count(database_url: str, sql: str) -> int:
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


def wait_until(condition, timeout: float, what: str, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the worker exited ({process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.25)


def start_worker(stack: LocalStack, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    log = stack.logs / "worker.log"
    offset = log.stat().st_size if log.exists() else 0
    with log.open("ab") as out:
        worker = subprocess.Popen([sys.executable, "-m", "spark_detector", "run", "--drain"],
                                  cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    wait_for_line(log, offset, "worker started", worker, timeout=300)
    return worker, offset


def stream(stack: LocalStack, env: dict[str, str], transactions: Path, importance: Path,
           rows_per_chunk: int, interval: float) -> subprocess.Popen:
    with (stack.logs / "producer.log").open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "producer", "stream", str(transactions), "--importance",
             str(importance), "--rows-per-chunk", str(rows_per_chunk), "--interval",
             str(interval)],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def queue_visible(sqs, url: str) -> int:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    return int(attrs["Attributes"]["ApproximateNumberOfMessages"])


def run_backlog(work_dir: Path, transactions: Path, importance: Path, rows_per_chunk: int,
                n_chunks: int) -> dict:
    with LocalStack.start(work_dir, database="txn_bench") as stack:
        env = stack.env()
        _, sqs = stack.clients()
        producer = stream(stack, env, transactions, importance, rows_per_chunk, 0)
        if producer.wait(timeout=600) != 0:
            raise RuntimeError(f"the producer failed: see {stack.logs}/producer.log")
        wait_until(lambda: queue_visible(sqs, stack.resources.queue_url) >= n_chunks, 300,
                   "every chunk queued by the trigger")
        worker, offset = start_worker(stack, env)
        started = time.time()  # the worker's first receive follows "worker started" at once
        with MemorySampler(worker.pid) as memory:
            wait_until(lambda: count(stack.database_url,
                                     "SELECT count(*) FROM processed_chunks") >= n_chunks,
                       900, "the backlog drained", worker)
        stop_process(worker, timeout=120)
        chunks = chunk_rows(stack.database_url)
        batches = batch_lines(stack.logs / "worker.log", offset)
    seconds = max(c["applied_at"] for c in chunks) - started
    rows = sum(c["rows"] for c in chunks)
    stages = {name: sum(b[f"{name}_ms"] for b in batches) / 1000
              for name in ("spark", "apply", "publish")}
    stages["other"] = max(0.0, seconds - sum(stages.values()))
    return {
        "rows": rows, "chunks": len(chunks), "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds), "stage_seconds": {
            k: round(v, 3) for k, v in stages.items()},
        "batch_sizes": [b["chunks"] for b in batches],
        "peak_rss_python_mib": round(memory.peak_python / 2**20),
        "peak_rss_jvm_mib": round(memory.peak_jvm / 2**20),
    }


def run_nominal(work_dir: Path, transactions: Path, importance: Path, rows_per_chunk: int,
                n_chunks: int, interval: float) -> dict:
    with LocalStack.start(work_dir, database="txn_bench") as stack:
        env = stack.env()
        s3, _ = stack.clients()
        # Staged first so that the worker is warm before the first chunk, as in production.
        s3.upload_file(str(importance), stack.bucket, "reference/CustomerImportance.csv")
        worker, _ = start_worker(stack, env)
        with MemorySampler(worker.pid) as memory:
            producer = stream(stack, env, transactions, importance, rows_per_chunk, interval)
            wait_until(lambda: count(stack.database_url,
                                     "SELECT count(*) FROM processed_chunks") >= n_chunks,
                       n_chunks * interval + 300, "every chunk applied", worker)
        producer.wait(timeout=60)
        stop_process(worker, timeout=120)
        chunks = chunk_rows(stack.database_url)
        with psycopg2.connect(stack.database_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT latency_ms FROM detection_latency ORDER BY seq")
            detection_ms = [float(ms) for (ms,) in cur.fetchall()]
    latency = [c["applied_at"] - c["event_time"] for c in chunks]
    total_ms = [(c["spark_ms"] or 0) + (c["apply_ms"] or 0) for c in chunks]
    apply_ms = [c["apply_ms"] or 0 for c in chunks]
    first, last = total_ms[:10], total_ms[-10:]
    return {
        "chunks": len(chunks), "interval_s": interval,
        "latency_s": {"p50": percentile(latency, .5), "p90": percentile(latency, .9),
                      "p99": percentile(latency, .99), "max": max(latency)},
        "detection_latency_s": {"p50": _s(percentile(detection_ms, .5)),
                                "p99": _s(percentile(detection_ms, .99)),
                                "count": len(detection_ms)},
        "per_chunk": {"latency_s": latency, "total_ms": total_ms, "apply_ms": apply_ms,
                      "batch_of_one": all(c is not None for c in total_ms)},
        "history_ratio_last10_first10": round(statistics.median(last) / statistics.median(first),
                                              3),
        "chunk60_over_chunk5": (round(total_ms[59] / total_ms[4], 3)
                                if len(total_ms) >= 60 else None),
        "peak_rss_python_mib": round(memory.peak_python / 2**20),
        "peak_rss_jvm_mib": round(memory.peak_jvm / 2**20),
    }


def _s(ms: float | None) -> float | None:
    return None if ms is None else round(ms / 1000, 3)


def machine() -> dict:
    import pyspark

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                            text=True, check=False).stdout.strip()
    return {
        "cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(), "python": platform.python_version(),
        "pyspark": pyspark.__version__, "git_commit": commit,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a small version for a smoke check (about a minute)")
    parser.add_argument("--rows", type=int, help="rows in the data set (default: full size)")
    parser.add_argument("--rows-per-chunk", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=1.0,
                        help="seconds between chunks in the nominal-rate scenario")
    parser.add_argument("--baseline-every", type=int, default=5,
                        help="measure the recompute-everything baseline every N chunks")
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / ".local")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    return parser


def main(argv: list[str] | None = None) -> int:
    from bench.baseline import run_baseline
    from bench.report import plot, summary_table

    args = build_parser().parse_args(argv)
    if args.quick:
        rows, per_chunk, every = args.rows or 12_000, 2_000, 1
    else:
        rows, per_chunk, every = args.rows or FULL_ROWS, args.rows_per_chunk, args.baseline_every
    transactions, importance = sample_data(args.work_dir, rows)
    n_chunks = -(-rows // per_chunk)
    out = args.out / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    print(f"bench: {rows:,} rows in {n_chunks} chunks of {per_chunk:,}; results in {out}",
          flush=True)
    print("1/3 backlog drain ...", flush=True)
    backlog = run_backlog(args.work_dir, transactions, importance, per_chunk, n_chunks)
    print("2/3 nominal rate ...", flush=True)
    nominal = run_nominal(args.work_dir, transactions, importance, per_chunk, n_chunks,
                          args.interval)
    print("3/3 baseline (recompute everything with Spark after each chunk) ...", flush=True)
    baseline = run_baseline(transactions, importance, per_chunk, every)
    ours_last = nominal["per_chunk"]["total_ms"][-1]
    baseline_last = baseline["per_chunk_ms"][-1] if baseline["per_chunk_ms"] else None
    results = {
        "machine": machine(), "rows": rows, "rows_per_chunk": per_chunk, "chunks": n_chunks,
        "quick": args.quick, "backlog": backlog, "nominal": nominal, "baseline": baseline,
        "baseline_over_ours_at_last_chunk": (round(baseline_last / ours_last, 1)
                                             if baseline_last and ours_last else None),
        "memory_peak_mib": {
            "python": max(backlog["peak_rss_python_mib"], nominal["peak_rss_python_mib"]),
            "jvm": max(backlog["peak_rss_jvm_mib"], nominal["peak_rss_jvm_mib"])},
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, out)
    print(summary_table(results), flush=True)
    print(f"written: {out}/results.json and its plots", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
