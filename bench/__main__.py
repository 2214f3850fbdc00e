"""``python -m bench [--quick]`` (``make bench ARGS="--quick"``): see ``bench.run``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.run import BenchError, default_config, format_table, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 6 chunks of 2,000 rows (about a minute)")
    parser.add_argument("--out", type=Path,
                        help="results folder (default bench/results/<UTC timestamp>)")
    parser.add_argument("--work-dir", type=Path,
                        help="the local stack's logs and PostgreSQL (default .local/bench)")
    parser.add_argument("--data-root", type=Path,
                        help="where generated data is cached (default .local, as make demo)")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="seconds between chunks in the nominal-rate phase (default 1.0)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the recompute-everything baseline")
    args = parser.parse_args(argv)
    config = default_config(args.quick, results_dir=args.out, work_dir=args.work_dir,
                            data_root=args.data_root, interval_s=args.interval,
                            baseline=not args.no_baseline)
    try:
        results = run(config)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    print(format_table(results, config.results_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
