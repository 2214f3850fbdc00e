"""`python -m spark_detector {run,backfill,status,skip-seq,migrate,replay}` — the worker's edge.

Reads settings once, builds the clients, and hands them to the loop in `worker.py`. Every
command ends with an exit code from docs/worker.md; an error it expects is one line on
stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import psycopg2
from botocore.config import Config

import json_logs
from spark_detector import db
from spark_detector.config import ConfigError, WorkerSettings

# botocore's standard mode retries throttling and 5xx with capped exponential backoff.
BOTO_CONFIG = Config(retries={"mode": "standard", "max_attempts": 8},
                     connect_timeout=5, read_timeout=30)
# The outage probes' client tries once, with short timeouts: with BOTO_CONFIG's attempts, one
# probe in a hard outage took 35-70 s, and the worker resumed that long after S3 came back.
PROBE_CONFIG = Config(retries={"mode": "standard", "max_attempts": 1},
                      connect_timeout=2, read_timeout=5)


# also: CustomerImportance unusable (run, replay), a request refused (skip-seq), a replay that
# cannot run as asked
EXIT_BAD_SETTING = 2
EXIT_DATABASE_UNREACHABLE = 4
# run: 3 = the Spark runtime was lost (worker.EXIT_SPARK_LOST);
# 5 = a rebuild is unfinished (db.EXIT_REBUILD_IN_PROGRESS)


def database_unreachable(settings: WorkerSettings, exc: BaseException) -> int:
    """One line naming the database (no password), for an outage that ends a command."""
    cause = exc if isinstance(exc, db.DatabaseUnreachable) else exc.__cause__
    if isinstance(cause, db.DatabaseUnreachable):
        text = str(cause)
    else:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        text = f"the database {db.redact_dsn(settings.database_url)} is unreachable: {first}"
    print(f"spark_detector: {text}", file=sys.stderr)
    return EXIT_DATABASE_UNREACHABLE


def refuse_while_rebuilding(settings: WorkerSettings) -> None:
    """``db.RebuildInProgress`` when a `replay --replace` has not finished; checked before
    Spark starts (a refusal takes a second, not a JVM's start). The database gets the worker's
    retry budget to answer."""
    from spark_detector.retry import retry

    conn = retry(lambda: db.connect(settings.database_url), retry_on=(psycopg2.OperationalError,),
                 attempts=settings.db_retry_attempts, base=0.25, cap=4.0)
    try:
        unfinished = db.rebuild_in_progress(conn)
    finally:
        conn.close()
    if unfinished is not None:
        raise db.RebuildInProgress(unfinished.describe())


def aws_clients() -> tuple[object, object]:
    session = boto3.session.Session()
    return session.client("s3", config=BOTO_CONFIG), session.client("sqs", config=BOTO_CONFIG)


def cmd_run(settings: WorkerSettings, args: argparse.Namespace) -> int:
    from spark_detector.worker.native_memory import tune_arrow_pool, tune_malloc

    # before any thread or child process exists (the JVM inherits the environment set here)
    # and before pyarrow's import (the modules below import it)
    tuned = {**tune_malloc(), **tune_arrow_pool()}
    from spark_detector.ops.backfill import backfill
    from spark_detector.parsing import ReferenceRejected
    from spark_detector.spark.reference_weights import ReferenceUnavailable
    from spark_detector.worker.errors import DatabaseUnavailable
    from spark_detector.worker.loop import Worker, logger
    from spark_detector.worker.spark_runtime import SparkAggregator

    logger.info("malloc tuned", extra={"set": tuned})
    if args.flush_partial_after is not None:
        settings = _replace(settings, flush_partial_after_seconds=args.flush_partial_after)
    if args.backfill_every is not None:
        settings = _replace(settings, backfill_every_seconds=args.backfill_every)
    y_start_time = datetime.now(UTC)
    stop_event = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        logger.info("stop requested: finishing the current batch",
                    extra={"signal": signal.Signals(signum).name})
        stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        refuse_while_rebuilding(settings)
    except db.RebuildInProgress as exc:
        print(f"spark_detector: refusing to start: {exc}", file=sys.stderr)
        return db.EXIT_REBUILD_IN_PROGRESS
    s3, sqs = aws_clients()
    try:
        aggregator = SparkAggregator.start(
            settings, s3, lambda: db.connect(settings.database_url), stop_event)
    except ReferenceUnavailable:
        return 0  # asked to stop while waiting: nothing was started, nothing to clean up
    except ReferenceRejected as exc:
        print(f"spark_detector: refusing to start: CustomerImportance {exc}", file=sys.stderr)
        return EXIT_BAD_SETTING
    # PySpark installs its own SIGINT handler when the session starts: take it back.
    signal.signal(signal.SIGINT, stop)
    worker = Worker(settings, s3=s3, sqs=sqs, connect=lambda: db.connect(settings.database_url),
                    aggregate=aggregator.aggregate, runtime_alive=aggregator.alive,
                    kill_runtime=aggregator.kill, warm_up=aggregator.warm_up,
                    probe_spark=aggregator.probe,
                    probe_s3=boto3.session.Session().client("s3", config=PROBE_CONFIG),
                    y_start_time=y_start_time, stop_event=stop_event,
                    backfill=lambda conn: backfill(conn, s3, sqs, settings))
    try:
        return worker.run(drain=args.drain)
    except db.RebuildInProgress as exc:
        print(f"spark_detector: refusing to start: {exc}", file=sys.stderr)
        return db.EXIT_REBUILD_IN_PROGRESS
    except DatabaseUnavailable as exc:
        return database_unreachable(settings, exc)
    finally:
        worker.close()
        with contextlib.suppress(Exception):  # a lost JVM cannot be stopped politely
            aggregator.stop()


@contextlib.contextmanager
def migrated_connection(settings: WorkerSettings) -> Iterator[object]:
    """A connection to the worker's database with the schema up to date, closed afterwards."""
    conn = db.connect(settings.database_url)
    try:
        db.migrate(conn)
        yield conn
    finally:
        conn.close()


def cmd_backfill(settings: WorkerSettings, args: argparse.Namespace) -> int:
    from spark_detector.ops.backfill import backfill

    s3, sqs = aws_clients()
    with migrated_connection(settings) as conn:
        keys = backfill(conn, s3, sqs, settings, full=args.full)
    print(f"enqueued {len(keys)} chunk(s) that were neither applied nor rejected")
    return 0


def cmd_status(settings: WorkerSettings, args: argparse.Namespace) -> int:
    from spark_detector.ops.status import collect_status, format_status

    _, sqs = aws_clients()
    with migrated_connection(settings) as conn:
        status = collect_status(conn, sqs, settings)
    print(format_status(status, as_json=args.json))
    return 0


def cmd_skip_seq(settings: WorkerSettings, args: argparse.Namespace) -> int:
    import getpass

    from spark_detector.ops.skip_seq import SkipRefused, refuse_present, skip_numbers

    who = args.by or os.environ.get("USER") or getpass.getuser()
    last = args.through if args.through is not None else args.seq
    s3, _ = aws_clients()
    try:
        refuse_present(s3, settings, args.seq, last, force=args.force)
        with migrated_connection(settings) as conn:
            next_seq = skip_numbers(conn, args.seq, last, reason=args.reason, decided_by=who)
    except SkipRefused as exc:
        print(f"spark_detector: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"skipped {args.seq}" + (f"-{last}" if last != args.seq else "")
          + f"; the stream now waits for chunk {next_seq}")
    return 0


def cmd_migrate(settings: WorkerSettings, _args: argparse.Namespace) -> int:
    with migrated_connection(settings) as conn:
        print(f"schema version {db.schema_version(conn)}")
    return 0


def cmd_replay(settings: WorkerSettings, args: argparse.Namespace) -> int:
    from spark_detector.engine.failures import failure_text
    from spark_detector.ops.replay import ReplayOptions, run_replay, submit_args_for_local_driver
    from spark_detector.ops.replay_plan import ReplayError, ReplayRefused
    from spark_detector.parsing import ReferenceRejected
    from spark_detector.spark.job import FetchSpec
    from spark_detector.spark.session import build_spark

    options = ReplayOptions(into=args.into, replace=args.replace, order=args.order,
                            rules=tuple(args.rule), importance=args.importance,
                            publish=args.publish, compare=args.compare, reset=args.reset)
    s3, _ = aws_clients()
    sessions = []

    def spark_factory():
        submit_args = submit_args_for_local_driver(os.environ)
        if submit_args is not None:
            os.environ["PYSPARK_SUBMIT_ARGS"] = submit_args
        sessions.append(build_spark(settings.spark_master, app_name="spark_detector_replay"))
        return sessions[0]

    try:
        report = run_replay(settings, options, s3=s3, spark_factory=spark_factory,
                            fetch_spec=FetchSpec.from_env(settings.bucket))
    except ReplayRefused as exc:
        print(f"replay refused: {exc}", file=sys.stderr)
        return 3
    except ReplayError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTING
    except ReferenceRejected as exc:
        print(f"replay: CustomerImportance {exc}", file=sys.stderr)
        return EXIT_BAD_SETTING
    except psycopg2.OperationalError:
        raise  # main() says which database, exit 4
    except Exception as exc:  # the command's edge: one line, never a traceback
        print(f"replay failed: {failure_text(exc)}", file=sys.stderr)
        return 1
    finally:
        for session in sessions:
            session.stop()
    print(report.render())
    return 0


def _replace(settings: WorkerSettings, **changes: Any) -> WorkerSettings:
    from dataclasses import replace

    return replace(settings, **changes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m spark_detector",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="drain the chunk queue forever (until SIGTERM/SIGINT)")
    run.add_argument("--drain", action="store_true",
                     help="at a graceful stop, also write the last partial detection file")
    run.add_argument("--flush-partial-after", type=float, metavar="SECONDS",
                     help="write a partial detection file after this much idle time")
    run.add_argument("--backfill-every", type=float, metavar="SECONDS",
                     help="also enqueue chunks whose S3 event was lost, this often")
    run.set_defaults(func=cmd_run)
    backfill = sub.add_parser("backfill", help="enqueue every chunk neither applied nor"
                              " rejected, listed from the chunk the stream waits for")
    backfill.add_argument("--full", action="store_true",
                          help="list the whole chunk prefix (hand uploads whose event was lost)")
    backfill.set_defaults(func=cmd_backfill)
    status = sub.add_parser("status", help="queue depths, chunks, detections, outbox")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)
    skip = sub.add_parser("skip-seq", help="declare a chunk sequence number that will never "
                          "come, so the stream moves on (recorded with who and why)")
    skip.add_argument("seq", type=int, metavar="SEQ")
    skip.add_argument("--through", type=int, metavar="LAST", help="skip SEQ..LAST")
    skip.add_argument("--reason", required=True, help="why it will never come")
    skip.add_argument("--by", help="who decided (default: $USER)")
    skip.add_argument("--force", action="store_true",
                      help="skip even though the chunk's object exists in S3")
    skip.set_defaults(func=cmd_skip_seq)
    sub.add_parser("migrate", help="apply the schema migrations and exit"
                   ).set_defaults(func=cmd_migrate)
    replay = sub.add_parser(
        "replay", help="rebuild state and detections from the chunk archive (one Spark job)",
        description="Replay the chunks under the chunk prefix through the rules into another"
                    " database or schema; see docs/rebuild-and-what-if.md.")
    where = replay.add_mutually_exclusive_group(required=True)
    where.add_argument("--into", metavar="URL|SCHEMA",
                       help="a postgresql:// URL (database created if missing) or a schema"
                            " name in the live database (created if missing)")
    where.add_argument("--replace", action="store_true",
                       help="rebuild the LIVE database in place (refused while a worker runs)")
    replay.add_argument("--order", choices=["recorded", "keys"],
                        help="recorded: the live apply order (the default, but for --replace"
                             " finishing an unfinished rebuild: its order); keys: key order,"
                             " for a database that is gone")
    replay.add_argument("--rule", action="append", default=[], metavar="NAME=VALUE",
                        help="a threshold for this replay only, e.g. PATID2_MIN_COUNT=60"
                             " (repeatable)")
    replay.add_argument("--importance", metavar="URI",
                        help="another CustomerImportance: s3://bucket/key or a local path")
    replay.add_argument("--publish", metavar="PREFIX",
                        help="write the detection files (50 each) under this S3 prefix")
    replay.add_argument("--compare", nargs="?", const=Path("replay-compare.csv"), type=Path,
                        metavar="CSV", help="compare with the live detections; the diff goes"
                                            " to CSV (default replay-compare.csv)")
    replay.add_argument("--reset", action="store_true",
                        help="empty the --into target first if it holds an earlier replay")
    replay.set_defaults(func=cmd_replay)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    json_logs.configure("spark_detector", "chunk_contract")
    try:
        settings = WorkerSettings.from_env()
    except ConfigError as exc:
        print(f"spark_detector: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTING
    try:
        return args.func(settings, args)
    except psycopg2.OperationalError as exc:  # unreachable, or lost on the way
        return database_unreachable(settings, exc)


if __name__ == "__main__":
    sys.exit(main())
