"""``make demo``: the whole pipeline on this machine, with a live view and a summary.

    python -m infra.local.demo [--rows N | --transactions PATH --importance PATH]
                               [--rows-per-chunk N] [--interval S] [--rule NAME=VALUE ...]

1. sample data: BankSim-shaped files generated once under ``.local/data`` (full size unless
   ``--rows``), or the files given;
2. the local stack (``LocalServices``): moto S3/SQS set up as template.yaml does, the Lambda
   runner with the real trigger handler, PostgreSQL (``DATABASE_URL`` or embedded) with a
   fresh ``txn_demo`` database;
3. the worker (``python -m spark_detector run --drain``) and, once it is ready, the producer
   (``python -m producer stream``), as separate processes with their own logs;
4. a live view once a second until the file is streamed and the queue drained, or Ctrl-C;
5. the worker is drained (it writes the last partial detection file), the detection files
   are copied out of the stack, a summary is printed and everything started is stopped.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import psycopg2

from chunk_contract import layout
from infra.local import postgres
from infra.local.interrupt import stops_cleanly
from infra.local.stack import REPO_ROOT, LocalServices, stop_process, wait_for_line
from infra.local.view import (
    Snapshot,
    Summary,
    collect_snapshot,
    is_settled,
    latency_percentiles,
    render,
    render_summary,
)
from spark_detector.engine.rules import BY_VARIABLE, RuleError, rule_variables

FULL_ROWS = 594_643
DEMO_DATABASE = "txn_demo"
CLEAR = "\x1b[H\x1b[2J"


class DemoError(RuntimeError):
    """The demo cannot start; the message says why and what to do."""


def parse_rules(values: Sequence[str]) -> dict[str, str]:
    """``--rule PATID2_MIN_COUNT=40`` -> ``{"PATID2_MIN_COUNT": "40"}``, checked as the worker
    checks its environment (``spark_detector.engine.rules``)."""
    try:
        return rule_variables(values)
    except RuleError as exc:
        raise DemoError(str(exc)) from exc


def sample_data(work_dir: Path, rows: int) -> tuple[Path, Path]:
    """The generated files for ``rows`` rows, generated on first use."""
    folder = work_dir / "data" / f"banksim-{rows}"
    transactions, importance = folder / "transactions.csv", folder / "CustomerImportance.csv"
    if not (transactions.exists() and importance.exists()):
        print(f"generating {rows:,} BankSim-shaped rows into {folder} (first run only) ...",
              flush=True)
        subprocess.run([sys.executable, "-m", "producer", "generate", "--out", str(folder),
                        "--rows", str(rows), "--seed", "0"], cwd=REPO_ROOT, check=True)
    return transactions, importance


def count_rows(path: Path) -> int:
    with path.open("rb") as f:
        return max(0, sum(1 for _ in f) - 1)


def copy_detection_files(s3, bucket: str, out: Path) -> tuple[str, ...]:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.csv"):
        old.unlink()
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                            Prefix=layout.DETECTIONS_PREFIX):
        for obj in page.get("Contents", []):
            keys.append(obj["Key"])
            s3.download_file(bucket, obj["Key"], str(out / Path(obj["Key"]).name))
    return tuple(sorted(keys))


def count_keys(s3, bucket: str, prefix: str) -> int:
    return sum(len(page.get("Contents", [])) for page in
               s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="make demo ARGS=...", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--rows", type=int, default=FULL_ROWS,
                      help=f"rows of generated sample data (default {FULL_ROWS:,}, full size)")
    data.add_argument("--transactions", type=Path, help="stream this transactions.csv instead")
    data.add_argument("--importance", type=Path,
                      help="its CustomerImportance.csv (required with --transactions)")
    parser.add_argument("--rows-per-chunk", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=1.0,
                        help="seconds between chunks (default 1.0; 0 = as fast as possible)")
    parser.add_argument("--rule", action="append", default=[], metavar="NAME=VALUE",
                        help="override a detection threshold, e.g. PATID2_MIN_COUNT=40 "
                             f"(names: {', '.join(BY_VARIABLE)})")
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / ".local",
                        help="data, logs, embedded PostgreSQL and outputs (default .local)")
    parser.add_argument("--no-view", action="store_true",
                        help="print one status line every 5 s instead of the live view")
    return parser


@stops_cleanly("infra.local.demo")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rules = parse_rules(args.rule)
        if args.transactions is not None:
            if args.importance is None:
                raise DemoError("--transactions needs --importance (the worker needs weights)")
            transactions, importance = args.transactions, args.importance
            for path in (transactions, importance):
                if not path.is_file():
                    raise DemoError(f"{path}: no such file")
        else:
            transactions, importance = sample_data(args.work_dir, args.rows)
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return run_demo(args, transactions.resolve(), importance.resolve(), rules)


def run_demo(args: argparse.Namespace, transactions: Path, importance: Path,
             rules: dict[str, str]) -> int:
    total_rows = count_rows(transactions)
    chunks_expected = -(-total_rows // args.rows_per_chunk)
    interrupted = False
    print("starting the local stack (moto, Lambda runner, PostgreSQL) ...", flush=True)
    with LocalServices.start(args.work_dir, database=DEMO_DATABASE) as stack:
        logs = stack.logs
        s3, sqs = stack.clients()
        # The producer uploads the weights too (and skips them when identical); staging them
        # first lets the worker start Spark before the first chunk, so latency figures do
        # not include the JVM's start-up.
        s3.upload_file(str(importance), stack.bucket, layout.REFERENCE_KEY)
        env = stack.env(WORKER_WAIT_TIME_SECONDS="2", **rules)
        worker_log = logs / "worker.log"
        offset = worker_log.stat().st_size if worker_log.exists() else 0
        with worker_log.open("ab") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "spark_detector", "run", "--drain"], cwd=REPO_ROOT,
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        producer = None
        try:
            print(f"starting the worker (Spark) ... log: {worker_log}", flush=True)
            wait_for_line(worker_log, offset, "worker started", worker, timeout=300)
            with (logs / "producer.log").open("ab") as log:
                producer = subprocess.Popen(
                    [sys.executable, "-m", "producer", "stream", str(transactions),
                     "--importance", str(importance), "--rows-per-chunk",
                     str(args.rows_per_chunk), "--interval", str(args.interval)],
                    cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True)
            started = time.monotonic()
            history: list[Snapshot] = []
            with psycopg2.connect(stack.database_url) as conn:
                completed = False
                try:
                    while True:
                        snapshot = collect_snapshot(stack, s3, sqs, conn,
                                                    time.monotonic() - started)
                        history = [*history[-30:], snapshot]
                        state = ("streaming" if producer.poll() is None else
                                 "finished" if producer.returncode == 0 else
                                 f"FAILED (exit {producer.returncode}, see {logs}/producer.log)")
                        show(history, chunks_expected, state, args.no_view)
                        if worker.poll() is not None:
                            print(f"\nthe worker exited with {worker.returncode}: see"
                                  f" {worker_log}")
                            break
                        if producer.returncode not in (None, 0):
                            break
                        if is_settled(snapshot, producer.returncode == 0):
                            completed = True
                            break
                        time.sleep(1.0)  # the view's refresh period, not a wait for a condition
                except KeyboardInterrupt:  # Ctrl-C or SIGTERM while streaming: drain, summarise
                    interrupted = True
                print("\nstopping: producer first, then the worker drains ...", flush=True)
                if producer.poll() is None:
                    stop_process(producer, timeout=60)
                worker_rc = stop_process(worker, timeout=180)
                elapsed = time.monotonic() - started
                final = collect_snapshot(stack, s3, sqs, conn, elapsed)
                p50, p99 = latency_percentiles(conn)
            out = args.work_dir.resolve() / "demo-output" / "detected_patterns"
            summary = Summary(
                elapsed_s=elapsed, completed=completed and worker_rc == 0, snapshot=final,
                latency_p50_s=p50, latency_p99_s=p99,
                detection_keys=copy_detection_files(s3, stack.bucket, out),
                quarantine_keys=count_keys(s3, stack.bucket, layout.QUARANTINE_PREFIX),
                output_dir=str(out), bucket=stack.bucket, database_url=stack.database_url,
                psql=postgres.psql_command(stack.database_url), logs=str(logs),
                embedded_postgres=stack.pgdata is not None)
            print(render_summary(summary), flush=True)
            return 0 if summary.completed or interrupted else 1
        finally:
            for process in (producer, worker):
                if process is not None and process.poll() is None:
                    stop_process(process, timeout=30)
            print("local stack stopped.", flush=True)


def show(history: list[Snapshot], chunks_expected: int, state: str, plain: bool) -> None:
    snapshot = history[-1]
    if plain:
        if len(history) == 1 or int(snapshot.elapsed_s) % 5 == 0:
            print(f"{snapshot.elapsed_s:6.0f} s  produced {snapshot.chunks_produced}"
                  f"  applied {snapshot.chunks_applied}  rows {snapshot.rows_done:,}"
                  f"  detections {sum(snapshot.detections.values())}", flush=True)
        return
    sys.stdout.write(CLEAR + render(history, chunks_expected=chunks_expected,
                                    producer_state=state) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
