"""``python -m bench [--quick]`` (``make bench ARGS="--quick"``): see ``bench.run``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.run import BenchError, default_config, format_table, run
from infra.local.interrupt import stops_cleanly


@stops_cleanly("bench")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 6 chunks of 2,000 rows streamed twice, 2 backlogs, "
                        "no baseline, no quiet wait (a few minutes)")
    parser.add_argument("--out", type=Path,
                        help="results folder (default bench/results/<UTC timestamp>)")
    parser.add_argument("--work-dir", type=Path,
                        help="the local stack's logs and PostgreSQL (default .local/bench)")
    parser.add_argument("--data-root", type=Path,
                        help="where generated data is cached (default .local, as make demo)")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="seconds between chunks in the nominal-rate and recovery phases "
                        "(default 1.0)")
    parser.add_argument("--passes", type=int,
                        help="times the data set is streamed, as one stream (default 5: 300 "
                        "chunks; --quick 2)")
    parser.add_argument("--backlog-repeats", type=int,
                        help="backlog drains, each on a fresh database (default 3; --quick 2)")
    parser.add_argument("--noisy-load", type=float, default=1.5,
                        help="1-minute load average above which a phase's figures are marked "
                        "noisy (default 1.5, for 2 cores)")
    parser.add_argument("--quiet-wait", type=float,
                        help="seconds to wait at most, before each phase, for the 1-minute load "
                        "to fall to --noisy-load (default 60; --quick 0)")
    parser.add_argument("--kill-after", type=int,
                        help="recovery: chunks applied before the kill (default 10; --quick 3)")
    parser.add_argument("--no-recovery", action="store_true", help="skip the recovery phase")
    parser.add_argument("--no-peer", action="store_true",
                        help="skip the Structured Streaming peer (bench.peer_streaming)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the recompute-everything baseline (--quick always does)")
    args = parser.parse_args(argv)
    for name in ("passes", "backlog_repeats", "kill_after"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    config = default_config(args.quick, results_dir=args.out, work_dir=args.work_dir,
                            data_root=args.data_root, interval_s=args.interval,
                            baseline=False if args.no_baseline else None,
                            passes=args.passes, backlog_repeats=args.backlog_repeats,
                            noisy_load=args.noisy_load, quiet_wait_s=args.quiet_wait,
                            kill_after=args.kill_after, recovery=not args.no_recovery,
                            peer=not args.no_peer)
    try:
        results = run(config)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    print(format_table(results, config.results_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
