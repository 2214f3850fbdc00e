"""Backlog drain on ``local[2]`` versus a 2-executor standalone cluster, in the same run.

    .venv/bin/python -m bench.bench_cluster [--rows 300000] [--batch-chunks 10]

On a local stack per phase (``LocalServices``: moto, the Lambda runner with the real trigger,
embedded PostgreSQL), the producer writes the whole file at ``--interval 0`` with no worker
running; then the real worker (``python -m spark_detector run``) drains the queue:

1. ``local[2]``: Spark in the worker's process, as ``make bench`` runs it;
2. ``standalone``: a master and one worker daemon from the pyspark distribution (2 cores,
   2 GiB), two executors of 1 core / 768 MiB, whose Python is a venv holding only
   ``infra/executor-requirements.txt`` (settings in a ``spark-defaults.conf``).

Both share this machine's cores with everything else: the figures compare the two set-ups
under the same load (recorded), they do not predict a real cluster. Prints one JSON object:
per phase, rows/s from the first receive to the last commit, the steady batches' rows/s
(every batch after the first), start-up time, per-batch stages; the load average before and
after each phase.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import measure
from bench.run import BenchConfig, Phase, read_chunks
from infra.local import postgres
from infra.local.demo import sample_data
from infra.local.interrupt import stops_cleanly
from infra.local.spark_cluster import EXECUTOR_REQUIREMENTS, create_venv, standalone_cluster
from infra.local.stack import REPO_ROOT, LocalServices


def steady_rows_per_s(batches: list[dict]) -> float | None:
    """Rows over Spark + apply time of the batches after the first (the first pays warm-up)."""
    steady = batches[1:]
    if not steady:
        return None
    return round(sum(b["rows_good"] + b["rows_rejected"] for b in steady)
                 / (sum(b["batch_ms"] for b in steady) / 1000))


def drain(stack: LocalServices, server_url: str, config: BenchConfig, name: str,
          transactions: Path, importance: Path, **env: str) -> dict:
    phase = Phase(name, stack, server_url)
    phase.env.update(env)
    phase.env.pop("PYSPARK_PYTHON", None)  # the executors' Python is spark-defaults' choice
    load_before = os.getloadavg()
    phase.queue_backlog(transactions, importance, config)
    started = time.monotonic()
    phase.start_worker()
    try:
        phase.wait_applied(config.chunks, timeout=900)
    finally:
        phase.stop_worker()
    batches = phase.batches()
    figures = measure.backlog_figures(batches, read_chunks(phase.database_url))
    ready = next(json.loads(line) for line in phase.worker_log.read_text().splitlines()
                 if line.startswith("{") and '"spark ready"' in line)
    return {
        "rows_per_s": figures["rows_per_s"],
        "steady_batches_rows_per_s": steady_rows_per_s(batches),
        "rows": figures["rows"], "wall_s": figures["wall_s"],
        "batch_sizes": figures["batch_sizes"],
        "per_batch": figures["per_batch"],
        "worker_start_to_last_commit_s": round(time.monotonic() - started, 1),
        "warm_up_ms": ready.get("warm_up_ms"),
        "master": ready.get("master"), "default_parallelism": ready.get("default_parallelism"),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "median_spark_ms": statistics.median(b["spark_ms"] for b in batches),
        "median_apply_ms": statistics.median(b["apply_ms"] for b in batches),
    }


def run(rows: int, batch_chunks: int, work_dir: Path) -> dict:
    config = BenchConfig(rows=rows, rows_per_chunk=10_000, interval_s=0, quick=False,
                         results_dir=work_dir, work_dir=work_dir,
                         data_root=REPO_ROOT / ".local", baseline=False)
    transactions, importance = (p.resolve() for p in sample_data(config.data_root, rows))
    executor_python = create_venv(work_dir / "executor-env", EXECUTOR_REQUIREMENTS)
    conf_dir = work_dir / "spark-conf"
    conf_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / "spark-defaults.conf").write_text(
        f"spark.pyspark.python {executor_python}\n"
        "spark.executor.cores 1\nspark.executor.memory 768m\nspark.cores.max 2\n")
    common = {"WORKER_MAX_BATCH_CHUNKS": str(batch_chunks)}
    results: dict = {"rows": rows, "chunks": config.chunks, "batch_chunks": batch_chunks,
                     "cpu_count": os.cpu_count()}
    # One local stack per phase: each streams the file into its own bucket, as one producer
    # (chunk sequence numbers are unique within a bucket's stream).
    with LocalServices.start(work_dir / "stack-local2", database="cluster_bench") as stack:
        server_url = postgres.with_database(stack.database_url, "postgres")
        print("[bench_cluster] local[2]", file=sys.stderr, flush=True)
        results["local[2]"] = drain(stack, server_url, config, "local2", transactions,
                                    importance, SPARK_MASTER="local[2]", **common)
    with (LocalServices.start(work_dir / "stack-standalone", database="cluster_bench") as stack,
          standalone_cluster(work_dir / "cluster", cores=2, memory="2g") as cluster):
        server_url = postgres.with_database(stack.database_url, "postgres")
        print(f"[bench_cluster] standalone {cluster.master_url}", file=sys.stderr, flush=True)
        results["standalone"] = drain(
            stack, server_url, config, "standalone", transactions, importance,
            SPARK_MASTER=cluster.master_url, SPARK_CONF_DIR=str(conf_dir), **common)
        results["standalone"]["executors"] = len(cluster.executor_dirs())
    return results


@stops_cleanly("bench.bench_cluster")
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--batch-chunks", type=int, default=10)
    parser.add_argument("--work-dir", type=Path,
                        default=Path(tempfile.mkdtemp(prefix="bench-cluster-")))
    args = parser.parse_args()
    print(json.dumps(run(args.rows, args.batch_chunks, args.work_dir), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
