"""``python -m bench.recovery``: how long a killed worker's chunks take to be applied again.

On the local stack, the producer streams chunks at the nominal rate (1 chunk/s) to a running
worker. After ``--kill-after`` chunks are applied, the worker's whole process group (Python,
JVM, Spark's Python workers) gets SIGKILL, as an OOM kill or a lost host would do, and a new
worker is started at once. Reported: which chunks were in flight at the kill (in S3, not yet
applied), the time from the kill until the last of them was applied, the new worker's
start-up time, and whether the result equals an uninterrupted run (apply order = production
order, no chunk twice, nothing in the DLQ).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

from bench.run import Phase, applied_count, default_config, queue_visible, read_chunks
from infra.local import postgres
from infra.local.demo import sample_data
from infra.local.stack import LocalServices, poll_until, wait_for_line


def applied(url: str) -> dict[str, datetime]:
    """Applied chunk -> when, in apply order."""
    return {row.chunk_key: row.applied_at for row in read_chunks(url)}


def chunk_keys(s3, bucket: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="stream_chunks/")
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recovery", description=__doc__)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--kill-after", type=int, default=10, help="chunks applied first")
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    config = default_config(quick=False)
    transactions, importance = sample_data(config.data_root, args.rows)
    chunks = (args.rows + 9_999) // 10_000
    with LocalServices.start(config.work_dir, database="recovery") as stack:
        server_url = postgres.with_database(stack.database_url, "postgres")
        phase = Phase("recovery", stack, server_url)
        s3, sqs = stack.clients()
        # the reference first, so that the worker is ready before the first chunk
        s3.upload_file(str(importance), stack.bucket, "reference/CustomerImportance.csv")
        first = phase.start_worker()
        wait_for_line(phase.worker_log, 0, "worker started", first, timeout=300)
        producer = phase.producer(transactions, importance, config, interval=args.interval,
                                  from_start=False)
        phase.wait_applied(args.kill_after, timeout=300)
        killed_at = time.time()
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        done_before = set(applied(phase.database_url))
        in_flight = [k for k in chunk_keys(s3, stack.bucket) if k not in done_before]
        offset = phase.worker_log.stat().st_size
        second = phase.start_worker(append=True)
        wait_for_line(phase.worker_log, offset, "worker started", second, timeout=300)
        started_s = time.time() - killed_at
        poll_until(lambda: set(in_flight) <= set(applied(phase.database_url)), 300,
                   "the killed worker's chunks applied", process=second, log=phase.worker_log)
        times = applied(phase.database_url)
        recovered_s = max(times[k].timestamp() for k in in_flight) - killed_at
        producer.wait(timeout=chunks * args.interval + 300)
        poll_until(lambda: applied_count(phase.database_url) == chunks
                   and queue_visible(sqs, stack.resources.queue_url) == 0, 300,
                   "every chunk applied", process=second, log=phase.worker_log)
        phase.stop_worker()
        order = list(applied(phase.database_url))
        result = {
            "chunks": chunks, "killed_after_applied": len(done_before),
            "in_flight_at_kill": [Path(k).name for k in in_flight],
            "restart_to_ready_s": round(started_s, 1),
            "kill_to_in_flight_applied_s": round(recovered_s, 1),
            "apply_order_is_production_order": order == sorted(order),
            "applied_once": len(order) == len(set(order)) == chunks,
            "dlq_visible": queue_visible(sqs, stack.resources.dlq_url),
            "load_average": os.getloadavg(),
        }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
