"""``python -m producer generate|stream``: the thin edge that reads config and builds clients."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import json_logs
from producer import banksim_profile, growing
from producer.config import InvalidSetting, MissingSetting, ProducerSettings
from producer.generate import generate
from producer.lease import LeaseLost, StreamLeased
from producer.sources import SourceError
from producer.state import BadState, SourceChanged
from producer.store import LocalStore, S3Store, StoreError
from producer.stream import ChunkReport, StreamOptions, run_stream

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1
EXIT_STREAM_LEASED = 3  # another producer holds the stream, or took it over

# Not __name__: run as `python -m producer` this module is "__main__".
logger = logging.getLogger("producer")


class ChunkReporter:
    """A progress line on ``out`` when it is a terminal, one log line per chunk otherwise."""

    def __init__(self, out: TextIO, interval: float, progress: bool) -> None:
        self.out = out
        self.interval = interval
        self.progress = progress
        self.behind = False

    def __call__(self, r: ChunkReport) -> None:
        behind = self.interval > 0 and r.lag > self.interval
        if self.progress and behind != self.behind:
            self.out.write("\n")  # keep the warning off the progress line
        if behind and not self.behind:
            logger.warning("behind_schedule", extra={
                "key": r.key, "lag_s": round(r.lag, 3),
                "detail": "uploads are slower than the interval; catching up without sleeping"})
        elif self.behind and not behind:
            logger.info("back_on_schedule", extra={"key": r.key, "lag_s": round(r.lag, 3)})
        self.behind = behind
        # The first chunk goes out at once, so count whole intervals, not just elapsed time.
        span = max(r.elapsed, self.interval * r.chunks_sent)
        rate = r.rows_sent / span if span > 0 else 0.0
        if self.progress:
            self.out.write(
                f"\rchunks {r.chunks_sent:,}  rows {r.rows_sent:,}  rate {rate:,.0f} rows/s"
                f"  lag {r.lag:.2f} s  last {r.key}   "
            )
            self.out.flush()
        else:
            logger.info("chunk_written", extra={
                "key": r.key, "seq": r.seq, "first_row": r.first_row, "rows": r.rows,
                "bytes": r.size, "lag_s": round(r.lag, 4),
                "upload_ms": round(r.upload_seconds * 1000, 1), "chunks_sent": r.chunks_sent,
                "rows_sent": r.rows_sent, "rows_per_s": round(rate, 1)})

    def finish(self) -> None:
        if self.progress:
            self.out.write("\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m producer", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="write BankSim-shaped transactions.csv and "
                              "CustomerImportance.csv")
    gen.add_argument("--out", type=Path, required=True, help="output folder")
    gen.add_argument("--rows", type=int, default=banksim_profile.FULL_ROWS,
                     help="number of transactions (default: %(default)s, the real file's)")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    gen.add_argument("--customers", type=int,
                     help="a growing stream (producer/growing.py): this many distinct customers, "
                     "new ones arriving throughout the file (default: BankSim's 4,112 customers, "
                     "all known from the first days)")
    gen.add_argument("--merchants", type=int,
                     help="with --customers: merchants, the two largest with 85%% of the "
                     "transactions (default: 50)")
    gen.add_argument("--importance-customers", type=int,
                     help="with --customers: CustomerImportance rows for the transactions of the "
                     f"first this many customers (default: {growing.IMPORTANCE_CUSTOMERS:,})")

    st = commands.add_parser("stream", help="stream the master file to S3 in chunks")
    st.add_argument("source", help="master transactions CSV: a path, s3://bucket/key or "
                    "http(s):// URL (Google Drive share links work)")
    st.add_argument("--importance", help="CustomerImportance.csv (path or URI), uploaded once "
                    "to $REFERENCE_KEY before the first chunk")
    st.add_argument("--bucket", help="overrides $BUCKET")
    st.add_argument("--rows-per-chunk", type=int, help="rows per chunk (env ROWS_PER_CHUNK, "
                    "default 10000)")
    st.add_argument("--interval", type=float, help="seconds between chunks, 0 = as fast as "
                    "possible (env CHUNK_INTERVAL_SECONDS, default 1.0)")
    st.add_argument("--max-chunks", type=int, help="stop after this many chunks")
    st.add_argument("--from-start", action="store_true", help="ignore the saved position")
    st.add_argument("--take-over", action="store_true",
                    help="take the stream although another producer's lease has not expired"
                         " (only when that producer is known to be gone: it crashed)")
    st.add_argument("--passes", type=int, default=1, help="send the file this many times: each "
                    "pass after the first starts again at its top, with the next sequence "
                    "numbers, on the same schedule (default 1)")
    st.add_argument("--dry-run", type=Path, metavar="DIR",
                    help="write chunks, reference and state under DIR instead of S3")
    return parser


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C / SIGTERM ask the loop to stop after the current upload instead of killing it."""

    def request_stop(signum: int, _frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_generate(args: argparse.Namespace, err: TextIO) -> int:
    started = time.perf_counter()
    if args.customers is None:
        if args.merchants is not None or args.importance_customers is not None:
            raise ValueError("--merchants and --importance-customers go with --customers")
        summary = generate(args.out, rows=args.rows, seed=args.seed)
        logger.info("generated", extra={
            "rows": summary.rows, "customers": summary.customers, "merchants": summary.merchants,
            "pairs": summary.pairs, "seed": args.seed,
            "transactions": str(summary.transactions_path),
            "importance": str(summary.importance_path),
            "seconds": round(time.perf_counter() - started, 2)})
        return 0

    def progress(rows: int) -> None:
        elapsed = time.perf_counter() - started
        if err.isatty():
            err.write(f"\rrows {rows:,} of {args.rows:,}  ({rows / elapsed:,.0f} rows/s)   ")
            err.flush()
        else:
            logger.info("generating", extra={"rows": rows, "of_rows": args.rows,
                                             "seconds": round(elapsed, 1)})

    summary = growing.generate_growing(
        args.out, rows=args.rows, customers=args.customers,
        merchants=50 if args.merchants is None else args.merchants, seed=args.seed,
        importance_customers=(growing.IMPORTANCE_CUSTOMERS if args.importance_customers is None
                              else args.importance_customers),
        progress=progress)
    if err.isatty() and args.rows >= growing.PROGRESS_EVERY:
        err.write("\n")
    logger.info("generated", extra={
        "rows": summary.rows, "customers": summary.customers, "merchants": summary.merchants,
        "importance_rows": summary.importance_rows, "seed": args.seed, "growing": True,
        "transactions": str(summary.transactions_path),
        "importance": str(summary.importance_path),
        "seconds": round(time.perf_counter() - started, 2)})
    return 0


def run_stream_command(args: argparse.Namespace, err: TextIO) -> int:
    settings = ProducerSettings.from_env().override(
        bucket=args.bucket, rows_per_chunk=args.rows_per_chunk, interval=args.interval
    )
    import boto3
    from botocore.config import Config

    # Bounded exponential backoff on every S3 call; AWS_ENDPOINT_URL is honoured by boto3.
    s3 = boto3.client("s3", config=Config(retries={"max_attempts": 6, "mode": "standard"}))
    store = LocalStore(args.dry_run) if args.dry_run else S3Store(s3, settings.require_bucket())
    stop = threading.Event()
    reporter = ChunkReporter(err, settings.interval, progress=err.isatty())
    options = StreamOptions(args.source, args.importance, args.max_chunks, args.from_start,
                            args.passes, args.take_over)

    def started(next_row: int, next_seq: int) -> None:
        logger.info("stream_started", extra={
            "source": args.source, "target": store.location, "next_row": next_row,
            "next_seq": next_seq, "rows_per_chunk": settings.rows_per_chunk,
            "interval_s": settings.interval})

    try:
        with stop_on_signals(stop):
            result = run_stream(
                settings, options, store, s3, stop=stop, report=reporter, on_start=started
            )
    finally:
        reporter.finish()
    logger.info("stream_stopped" if result.stopped_by_signal else "stream_finished", extra={
        "chunks_sent": result.chunks_sent, "rows_sent": result.rows_sent,
        "next_row": result.next_row, "next_seq": result.next_seq,
        "reference_uploaded": result.reference_uploaded})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    json_logs.configure("producer", "chunk_contract")
    try:
        if args.command == "generate":
            return run_generate(args, sys.stderr)
        return run_stream_command(args, sys.stderr)
    except (SourceError, SourceChanged, BadState, MissingSetting, InvalidSetting,
            ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except (StreamLeased, LeaseLost) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_STREAM_LEASED


if __name__ == "__main__":
    sys.exit(main())
