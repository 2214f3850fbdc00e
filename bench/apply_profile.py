"""Where a chunk's apply goes, statement by statement, as the state grows.

    python -m bench.apply_profile                  # 400 chunks of the growing stream, per 100
    python -m bench.apply_profile --chunks 100 --every 25 --customers 200000

The chunks of the growing data set (``python -m producer generate --customers N``, generated
under ``.local/data/`` the first time, as ``bench.growing`` does) are applied with the engine's
own ``apply_chunk``, back to back, on an embedded PostgreSQL with ``bench.state_size``'s
settings (``DATABASE_URL``: that server). No Spark: each chunk is parsed and aggregated by the
reference model (``tests/reference_model.py``). Per window of ``--every`` chunks: the median
apply with its commit, the mean time of each statement (the ten largest), the state's pairs and
the size of ``pair_state`` and its key. It has no target; it shows which statement grows with
the state (docs/performance.md, "Why (a) and (c) are not met here").
"""

from __future__ import annotations

import argparse
import collections
import itertools
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import psycopg2.extensions

from bench.growing import growing_files
from bench.state_size import CHECKPOINT_SETTINGS, SHARED_BUFFERS
from infra.local import postgres
from infra.local.interrupt import stops_cleanly
from producer.chunks import check_header, iter_chunks
from spark_detector import db
from spark_detector.engine.state import ChunkRef, apply_chunk
from tests.reference_model import aggregate_rows, read_chunk, read_weights

REPO_ROOT = Path(__file__).resolve().parent.parent
ROWS_PER_CHUNK = 10_000
SHOWN = 10  # statements per window


def statement_label(sql: str) -> str:
    """A statement's first 60 characters, whitespace folded: its name in the table."""
    return " ".join(sql.split())[:60]


class TimingCursor(psycopg2.extensions.cursor):
    """Adds each statement's wall time to ``timings`` (a class attribute: one profile at a
    time)."""

    timings: ClassVar[collections.Counter[str]] = collections.Counter()

    def execute(self, query, vars=None):
        started = time.perf_counter()
        try:
            return super().execute(query, vars)
        finally:
            self.timings[statement_label(str(query))] += time.perf_counter() - started

    def copy_expert(self, sql, file, size=8192):
        started = time.perf_counter()
        try:
            return super().copy_expert(sql, file, size)
        finally:
            self.timings["COPY " + statement_label(sql)[5:]] += time.perf_counter() - started


def window_lines(first: int, applies_s: Sequence[float],
                 statements: Sequence[Mapping[str, float]], pairs: int,
                 sizes: Mapping[str, int]) -> list[str]:
    """A window's table: the median apply, then each statement's mean, largest first."""
    total: collections.Counter[str] = collections.Counter()
    for timings in statements:
        total.update(timings)
    n = len(applies_s)
    lines = [f"chunks {first}-{first + n - 1}: apply median"
             f" {statistics.median(applies_s) * 1000:.1f} ms (with its commit), state"
             f" {pairs:,} pairs, " + ", ".join(f"{name} {size / 1e6:,.0f} MB"
                                              for name, size in sorted(sizes.items()))]
    lines += [f"  {seconds / n * 1000:8.2f} ms  {label}"
              for label, seconds in total.most_common(SHOWN)]
    return lines


def chunk_texts(transactions: Path) -> Iterator[bytes]:
    """The file's chunks of ROWS_PER_CHUNK rows, each with the header, as the producer cuts
    them (``producer.chunks``)."""
    with transactions.open("rb") as f:
        header = check_header(f.readline())
        for chunk in iter_chunks(header, f, ROWS_PER_CHUNK, first_seq=1, first_row=0):
            yield chunk.body


def _state(conn: psycopg2.extensions.connection) -> tuple[int, dict[str, int]]:
    with conn.cursor() as cur:
        cur.execute("SELECT coalesce(sum(customers), 0) FROM merchant_state")
        (pairs,) = cur.fetchone()
        cur.execute("SELECT relname, pg_relation_size(oid) FROM pg_class"
                    " WHERE relname IN ('pair_state', 'pair_state_pkey')")
        sizes = dict(cur.fetchall())
    conn.rollback()
    return int(pairs), sizes


def profile(server_url: str, transactions: Path, importance: Path, chunks: int,
            every: int) -> None:
    weights = read_weights(importance.read_bytes())
    with postgres.scratch_database(server_url, "bench_apply_profile") as url:
        conn = db.connect(url, cursor_factory=TimingCursor)
        try:
            db.migrate(conn)
            y_start = datetime.now(UTC)
            applies: list[float] = []
            statements: list[dict[str, float]] = []
            for n, text in enumerate(itertools.islice(chunk_texts(transactions), chunks), 1):
                aggregates = aggregate_rows(f"profile/chunk-{n}.csv", read_chunk(text).rows,
                                            weights)
                TimingCursor.timings.clear()
                started = time.perf_counter()
                apply_chunk(conn, ChunkRef(aggregates.chunk_key), aggregates,
                            y_start_time=y_start)
                applies.append(time.perf_counter() - started)
                statements.append(dict(TimingCursor.timings))
                if len(applies) == every or n == chunks:
                    print("\n".join(window_lines(n - len(applies) + 1, applies, statements,
                                                 *_state(conn))), flush=True)
                    applies, statements = [], []
        finally:
            conn.close()


@stops_cleanly("bench.apply_profile")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.apply_profile",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=400,
                        help="chunks applied (default %(default)s)")
    parser.add_argument("--every", type=int, default=100,
                        help="chunks per window (default %(default)s)")
    parser.add_argument("--customers", type=int, default=3_000_000,
                        help="distinct customers of the data set (default %(default)s)")
    parser.add_argument("--rows", type=int, default=9_000_000,
                        help="rows of the data set (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", type=Path, default=REPO_ROOT / ".local",
                        help="where the data set is kept (default %(default)s)")
    parser.add_argument("--data", type=Path,
                        help="another data set: a folder with transactions.csv and"
                             " CustomerImportance.csv (e.g. .local/data/banksim-594643, which"
                             " `make bench` generates)")
    args = parser.parse_args(argv)
    if args.chunks < 1 or args.every < 1:
        parser.error("--chunks and --every must be at least 1")
    if args.data:
        transactions, importance = (args.data / "transactions.csv",
                                    args.data / "CustomerImportance.csv")
    else:
        transactions, importance = growing_files(args.data_root, args.rows, args.customers,
                                                 args.seed)
    settings = {**CHECKPOINT_SETTINGS, "shared_buffers": SHARED_BUFFERS}
    with postgres.scratch_server("bench-apply-profile", settings) as server_url:
        profile(server_url, transactions, importance, args.chunks, args.every)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
