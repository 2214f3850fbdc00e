"""``python -m bench.recovery``: how long a killed worker's chunks take to be applied again.

On a local stack of its own, a worker is started and ready; the producer streams chunks at
the nominal rate (1 chunk/s). After ``--kill-after`` chunks are applied, with a later one
written, the worker's whole process group (Python, JVM, Spark's Python workers) gets SIGKILL,
as an OOM kill or a lost host would do, and a new worker is started at once. Reported: which
chunks were in flight at the kill (in S3, not yet applied), the time from the kill until the
last of them was applied, the new worker's start-up time, and whether the result equals an
uninterrupted run (apply order = production order, no chunk twice, nothing in the DLQ).
``make bench`` measures the same (``bench.run.measure_recovery``) after its nominal phase.
"""

from __future__ import annotations

import argparse
import json
import sys

from bench.run import Phase, default_config, load_average, measure_recovery
from infra.local import postgres
from infra.local.demo import sample_data
from infra.local.interrupt import stops_cleanly
from infra.local.stack import LocalServices


@stops_cleanly("bench.recovery")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recovery", description=__doc__)
    parser.add_argument("--rows", type=int, default=300_000,
                        help="the data set streamed (again and again until recovered)")
    parser.add_argument("--kill-after", type=int, default=10, help="chunks applied first")
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    config = default_config(quick=False)
    transactions, importance = (p.resolve() for p in sample_data(config.data_root, args.rows))
    load_before = load_average()
    with LocalServices.start(config.work_dir, database="recovery") as stack:
        server_url = postgres.with_database(stack.database_url, "postgres")
        phase = Phase("recovery", stack, server_url)
        s3, _ = stack.clients()
        # the reference first, so that the worker is ready before the first chunk
        s3.upload_file(str(importance), stack.bucket, "reference/CustomerImportance.csv")
        phase.start_worker()
        try:
            phase.wait_ready(warm=True)
            result = measure_recovery(phase, transactions, importance, config,
                                      args.kill_after, args.interval, after_seq=0)
            phase.stop_worker()
        finally:
            phase.stop_worker(check=False)
    result.update(load_average_before=load_before, load_average_after=load_average())
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
