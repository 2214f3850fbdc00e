"""Benchmark (a) of issue 24: the cost of ``apply_chunk`` against the size of the state.

    python -m bench.state_size                        # 4,000 / 50,000 / 200,000 / 1,000,000
    python -m bench.state_size --sizes 4000,50000 --chunks 20 --compare-full

For each size K, on a fresh database: the state is built through the engine (``apply_chunk``
with build chunks of ``--build-pairs`` pairs): two large merchants with K customers each, every
customer with 1 + a geometric number of transactions (mean ``BUILD_MEAN_COUNT``) and a weight,
and 48 small merchants. Then ``--chunks`` measured chunks, the same shape at every size: 10,000
transactions over 5,000 pairs, half of them on the two large merchants (a tenth of those new
customers, the rest drawn from all K), half on the small merchants. With ``--compare-full`` the
same chunks are applied once more, continuing the state, with the rules evaluated in full as
before ``rule_evaluation`` (``tests/full_evaluation.py``).

Reported per size: the apply time (wall time of the ``apply_chunk`` call with its commit:
median, p90, p99, max), the PostgreSQL backend's CPU time per chunk (when the server runs on
this machine: less sensitive than wall time to other processes), the 1-minute load average
before and after the measured chunks, the merchants evaluated in full while measuring, and the
tables' and indexes' sizes on disk (per million pairs). The figure: the median at the largest
size over the median at the smallest (SPEC section 7: <= 1.25 from 4,000 to 1,000,000).

Writes ``results.json`` and ``state_size.png`` under ``bench/results/<UTC timestamp>-state-size/``
(or ``--out``) and prints a table. Uses ``DATABASE_URL``'s server when set (a database is created
there per size and dropped after), otherwise an embedded PostgreSQL in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import psycopg2.extensions
import psycopg2.sql

from bench.measure import percentile_cont
from infra.local import postgres
from infra.local.interrupt import stops_cleanly
from spark_detector import db
from spark_detector.chunk_aggregates import ChunkAggregates, PairAggregate
from spark_detector.engine import rule_evaluation
from spark_detector.engine.state import ChunkRef, apply_chunk

REPO_ROOT = Path(__file__).resolve().parent.parent
SIZES = (4_000, 50_000, 200_000, 1_000_000)
LARGE = ("M0000000001", "M0000000002")
SMALL = tuple(f"M{n:010d}" for n in range(3, 51))
CHUNK_PAIRS = 5_000  # half on LARGE
CHUNK_ROWS = 10_000
NEW_SHARE = 0.1  # of a measured chunk's pairs on LARGE: customers not seen before
BUILD_MEAN_COUNT = 15  # transactions per (large merchant, customer) in the built state
SMALL_CUSTOMERS = 20_000  # the small merchants' customers, drawn from this pool
TARGET_RATIO = 1.25
# The embedded server's shared_buffers: enough to hold the largest state (~0.5 GB of tables
# and indexes at 1,000,000 customers per large merchant), as a production server is sized;
# PostgreSQL's default (128MB) holds a quarter of it (docs/performance.md).
SHARED_BUFFERS = "2GB"
# No checkpoint while a size is measured: the build writes gigabytes of WAL at 1,000,000, and a
# checkpoint in the middle of the measured chunks would make every page they touch write a full
# image to the WAL. The WAL written per chunk is reported beside the times.
CHECKPOINT_SETTINGS = {"max_wal_size": "16GB", "checkpoint_timeout": "1h"}
GENDERS = "FFFFFMMMMEU"


@dataclass(frozen=True)
class Shape:
    size: int  # customers per large merchant
    chunks: int
    build_pairs: int
    seed: int


def _customer(number: int) -> str:
    return f"C{number:010d}"


def _pair(rng: random.Random, merchant: str, customer: str, count: int) -> PairAggregate:
    """A pair whose transactions are all weighted, with one weight drawn for the chunk."""
    weight = Decimal(rng.randrange(1, 1_000_000)) / 10_000
    amount = Decimal(rng.randrange(100, 6_000)) / 100
    return PairAggregate(merchant, customer, count, amount * count, weight * count, count,
                         rng.choice(GENDERS))


def _chunk(key: str, pairs: dict[tuple[str, str], PairAggregate]) -> ChunkAggregates:
    ordered = tuple(pairs[k] for k in sorted(pairs))
    return ChunkAggregates(key, sum(p.txn_count for p in ordered), 0, ordered)


def build_chunks(shape: Shape) -> Iterator[ChunkAggregates]:
    """The state: every customer 0..size-1 on both large merchants, plus the small merchants."""
    rng = random.Random(shape.seed)
    p = 1 / BUILD_MEAN_COUNT
    per_chunk = max(1, shape.build_pairs // len(LARGE))
    for number, start in enumerate(range(0, shape.size, per_chunk), 1):
        pairs = {}
        for c in range(start, min(shape.size, start + per_chunk)):
            for merchant in LARGE:
                count = 1
                while rng.random() > p:
                    count += 1
                pairs[(merchant, _customer(c))] = _pair(rng, merchant, _customer(c), count)
        for _ in range(CHUNK_PAIRS // 2):
            key = (rng.choice(SMALL), _customer(10**9 + rng.randrange(SMALL_CUSTOMERS)))
            pairs[key] = _pair(rng, *key, rng.randint(1, 3))
        yield _chunk(f"build/chunk-{number:06d}.csv", pairs)


def measured_chunks(shape: Shape) -> Iterator[ChunkAggregates]:
    """``shape.chunks`` chunks of CHUNK_ROWS transactions over CHUNK_PAIRS pairs."""
    rng = random.Random(shape.seed + 1)
    next_new = shape.size
    for number in range(1, shape.chunks + 1):
        pairs: dict[tuple[str, str], PairAggregate] = {}
        while len(pairs) < CHUNK_PAIRS // 2:
            if rng.random() < NEW_SHARE:
                customer, next_new = _customer(next_new), next_new + 1
            else:
                customer = _customer(rng.randrange(shape.size))
            merchant = rng.choice(LARGE)
            pairs[(merchant, customer)] = _pair(rng, merchant, customer, 2)
        while len(pairs) < CHUNK_PAIRS:
            key = (rng.choice(SMALL), _customer(10**9 + rng.randrange(SMALL_CUSTOMERS)))
            pairs[key] = _pair(rng, *key, 2)
        yield _chunk(f"measured/chunk-{number:06d}.csv", pairs)


def backend_cpu_ms(pid: int) -> float | None:
    """CPU time of a PostgreSQL backend on this machine (``/proc/<pid>/schedstat``: nanoseconds
    on a CPU); None when the server runs elsewhere."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e6
    except (OSError, ValueError, IndexError):
        return None


def table_sizes(conn: psycopg2.extensions.connection) -> dict[str, int]:
    """Bytes on disk of the engine's state tables and of each of their indexes."""
    with conn.cursor() as cur:
        cur.execute("""
            SELECT c.relname, pg_relation_size(c.oid)
            FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'i')
              AND (c.relname LIKE 'pair_%' OR c.relname LIKE 'merchant_%'
                   OR c.relname LIKE 'weight_order%' OR c.relname LIKE 'waiting_pairs%')
            ORDER BY 1""")
        sizes = dict(cur.fetchall())
    conn.rollback()
    return sizes


def _count(conn: psycopg2.extensions.connection, query: str) -> int:
    with conn.cursor() as cur:
        cur.execute(query)
        (value,) = cur.fetchone()
    conn.rollback()
    return value


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "median": round(statistics.median(values), 1),
            "p90": round(percentile_cont(values, 0.9), 1),
            "p99": round(percentile_cont(values, 0.99), 1), "max": round(max(values), 1)}


class FullEvaluations(logging.Handler):
    """Counts the merchants ``rule_evaluation`` evaluated in full, by reason."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.reasons: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        for merchant in getattr(record, "merchants", None) or []:
            if isinstance(merchant, dict):
                reason = merchant.get("reason", "?")
                self.reasons[reason] = self.reasons.get(reason, 0) + 1
            else:
                self.reasons["walk lost"] = self.reasons.get("walk lost", 0) + 1


def apply_all(conn: psycopg2.extensions.connection, chunks: Iterator[ChunkAggregates],
              label: str, total: int) -> tuple[list[float], list[float], list[int]]:
    """Apply the chunks; wall and backend CPU milliseconds and WAL bytes per chunk, with a
    progress line."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        (pid,) = cur.fetchone()
    conn.rollback()
    y_start = datetime.now(UTC)
    walls, cpus, wal = [], [], []
    for n, aggregates in enumerate(chunks, 1):
        lsn = _wal_lsn(conn)
        cpu_before = backend_cpu_ms(pid)
        started = time.perf_counter()
        apply_chunk(conn, ChunkRef(aggregates.chunk_key), aggregates, y_start_time=y_start)
        walls.append((time.perf_counter() - started) * 1000)
        cpu_after = backend_cpu_ms(pid)
        if cpu_before is not None and cpu_after is not None:
            cpus.append(cpu_after - cpu_before)
        wal.append(_wal_bytes_since(conn, lsn))
        if sys.stdout.isatty():
            print(f"\r[state-size] {label}: chunk {n}/{total}, last {walls[-1]:,.0f} ms   ",
                  end="", flush=True)
        elif n % 10 == 0 or n == total:
            print(f"[state-size] {label}: chunk {n}/{total}, last {walls[-1]:,.0f} ms",
                  flush=True)
    if sys.stdout.isatty():
        print(flush=True)
    return walls, cpus, wal


def _wal_lsn(conn: psycopg2.extensions.connection) -> str:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_current_wal_lsn()")
        (lsn,) = cur.fetchone()
    conn.rollback()
    return lsn


def _wal_bytes_since(conn: psycopg2.extensions.connection, lsn: str) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (lsn,))
        (written,) = cur.fetchone()
    conn.rollback()
    return int(written)


def measure_size(server_url: str, shape: Shape, compare_full: bool) -> dict:
    label = f"K={shape.size:,}"
    with postgres.scratch_database(server_url, "bench_state_size") as url:
        conn = db.connect(url)
        try:
            db.migrate(conn)
            build_total = -(-shape.size // max(1, shape.build_pairs // len(LARGE)))
            started = time.monotonic()
            apply_all(conn, build_chunks(shape), f"{label} building", build_total)
            build_s = time.monotonic() - started
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("VACUUM ANALYZE")  # as autovacuum would have, over a long stream
            conn.autocommit = False
            pairs = _count(conn, "SELECT count(*) FROM pair_state")
            counter = FullEvaluations()
            rules_log = logging.getLogger(rule_evaluation.__name__)
            level = rules_log.level
            rules_log.addHandler(counter)
            rules_log.setLevel(logging.INFO)
            load_before = [round(x, 2) for x in os.getloadavg()]
            try:
                walls, cpus, wal = apply_all(conn, measured_chunks(shape), f"{label} measuring",
                                             shape.chunks)
            finally:
                rules_log.removeHandler(counter)
                rules_log.setLevel(level)
            load_after = [round(x, 2) for x in os.getloadavg()]
            result = {
                "customers_per_large_merchant": shape.size, "state_pairs": pairs,
                "build_s": round(build_s, 1), "apply_ms": summary(walls),
                "backend_cpu_ms": summary(cpus) if cpus else None,
                "wal_bytes_median": statistics.median(wal),
                "per_chunk_ms": [round(w, 1) for w in walls],
                "load_before": load_before, "load_after": load_after,
                "full_evaluations": counter.reasons,
                "detections": _count(conn, "SELECT count(*) FROM detected_patterns"),
                "table_bytes": table_sizes(conn),
            }
            if compare_full:
                from tests.full_evaluation import applying_in_full

                again = Shape(shape.size, shape.chunks, shape.build_pairs, shape.seed + 7)
                load = [round(x, 2) for x in os.getloadavg()]
                with applying_in_full():
                    full_walls, full_cpus, _ = apply_all(conn, (
                        ChunkAggregates("full-" + c.chunk_key, c.rows_good, 0, c.pairs)
                        for c in measured_chunks(again)), f"{label} full evaluation",
                        shape.chunks)
                result["full_evaluation"] = {
                    "apply_ms": summary(full_walls),
                    "backend_cpu_ms": summary(full_cpus) if full_cpus else None,
                    "load_before": load, "load_after": [round(x, 2) for x in os.getloadavg()]}
        finally:
            conn.close()
    return result


def _show(server_url: str, name: str) -> str:
    with psycopg2.connect(server_url) as conn, conn.cursor() as cur:
        cur.execute(psycopg2.sql.SQL("SHOW {}").format(psycopg2.sql.Identifier(name)))
        (value,) = cur.fetchone()
    conn.close()
    return value


def ratio(results: list[dict], key: str = "apply_ms") -> float | None:
    first, last = results[0], results[-1]
    if not first.get(key) or not last.get(key) or len(results) < 2:
        return None
    return round(last[key]["median"] / first[key]["median"], 2)


def plot(results: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = results["sizes"]
    xs = [s["customers_per_large_merchant"] for s in sizes]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, pick in (("incremental (this engine)", lambda s: s),
                       ("full evaluation (before)", lambda s: s.get("full_evaluation"))):
        points = [(x, pick(s)) for x, s in zip(xs, sizes, strict=True) if pick(s)]
        if not points:
            continue
        median = [p["apply_ms"]["median"] for _, p in points]
        p90 = [p["apply_ms"]["p90"] for _, p in points]
        line = ax.plot([x for x, _ in points], median, marker="o", label=f"{name}: median")[0]
        ax.plot([x for x, _ in points], p90, ls="--", color=line.get_color(), lw=0.8,
                label=f"{name}: p90")
        cpu = [p["backend_cpu_ms"]["median"] for _, p in points if p.get("backend_cpu_ms")]
        if len(cpu) == len(points):
            ax.plot([x for x, _ in points], cpu, ls=":", color=line.get_color(), lw=0.8,
                    label=f"{name}: PostgreSQL CPU, median")
    for x, s in zip(xs, sizes, strict=True):
        ax.annotate(f"load {s['load_before'][0]:.1f}->{s['load_after'][0]:.1f}",
                    (x, s["apply_ms"]["median"]), xytext=(3, 6), textcoords="offset points",
                    fontsize=7)
    ax.set(xscale="log", yscale="log", xlabel="customers per large merchant (two of them)",
           ylabel="apply_chunk per 10,000-row chunk (ms)",
           title=f"Apply cost against state size (ratio largest/smallest {results['ratio']})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "state_size.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(sizes: list[int], chunks: int, build_pairs: int, seed: int, compare_full: bool,
        out: Path, shared_buffers: str | None = SHARED_BUFFERS) -> dict:
    results: dict = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {"sizes": sizes, "chunks": chunks, "build_pairs": build_pairs, "seed": seed,
                   "chunk_rows": CHUNK_ROWS, "chunk_pairs": CHUNK_PAIRS,
                   "new_share": NEW_SHARE, "compare_full": compare_full,
                   "tier_factor": rule_evaluation.TIER_FACTOR,
                   "tier_margin": rule_evaluation.TIER_MARGIN,
                   "shared_buffers": shared_buffers, "server_settings": CHECKPOINT_SETTINGS},
        "machine": {"cpu_count": os.cpu_count(),
                    "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
        "sizes": [],
    }
    settings = {**CHECKPOINT_SETTINGS, **({"shared_buffers": shared_buffers}
                                          if shared_buffers else {})}
    with postgres.scratch_server("bench-state-size", settings) as server_url:
        results["config"]["server_shared_buffers"] = _show(server_url, "shared_buffers")
        for size in sizes:
            results["sizes"].append(measure_size(
                server_url, Shape(size, chunks, build_pairs, seed), compare_full))
            out.mkdir(parents=True, exist_ok=True)  # a partial result survives a later failure
            (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    results["ratio"] = ratio(results["sizes"])
    results["cpu_ratio"] = ratio(results["sizes"], "backend_cpu_ms")
    results["target"] = {"ratio_at_most": TARGET_RATIO,
                         "met": None if results["ratio"] is None
                         else results["ratio"] <= TARGET_RATIO}
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["plots"] = [plot(results, out).name]
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def format_table(results: dict) -> str:
    lines = [f"{'customers/merchant':>18} {'pairs':>10} {'apply median':>12} {'p90':>8}"
             f" {'p99':>8} {'pg cpu':>8} {'WAL MB':>7} {'load before->after':>19}"
             f" {'full eval median':>16}  evaluated in full"]
    for s in results["sizes"]:
        cpu = s["backend_cpu_ms"]["median"] if s["backend_cpu_ms"] else None
        full = s.get("full_evaluation")
        lines.append(
            f"{s['customers_per_large_merchant']:>18,} {s['state_pairs']:>10,}"
            f" {s['apply_ms']['median']:>9,.1f} ms {s['apply_ms']['p90']:>8,.1f}"
            f" {s['apply_ms']['p99']:>8,.1f} {'-' if cpu is None else f'{cpu:,.0f}':>8}"
            f" {s['wal_bytes_median'] / 1e6:>7.2f}"
            f" {s['load_before'][0]:>9.2f} -> {s['load_after'][0]:<6.2f}"
            f" {'-' if not full else format(full['apply_ms']['median'], ',.1f') + ' ms':>16}"
            f"  {s['full_evaluations'] or '-'}")
    lines.append(f"ratio largest/smallest: {results['ratio']} (PostgreSQL CPU"
                 f" {results['cpu_ratio']}); target <= {TARGET_RATIO}:"
                 f" {'met' if results['target']['met'] else 'MISSED'}")
    return "\n".join(lines)


@stops_cleanly("bench.state_size")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.state_size",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES),
                        help="customers per large merchant, comma-separated (default %(default)s)")
    parser.add_argument("--chunks", type=int, default=40,
                        help="measured chunks per size (default %(default)s)")
    parser.add_argument("--build-pairs", type=int, default=100_000,
                        help="pairs per chunk while building the state (default %(default)s)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--compare-full", action="store_true",
                        help="also time the same chunks with the rules evaluated in full")
    parser.add_argument("--out", type=Path, help="results folder (default bench/results/"
                        "<UTC timestamp>-state-size)")
    parser.add_argument("--shared-buffers", default=SHARED_BUFFERS,
                        help="the embedded server's shared_buffers (default %(default)s; 'default'"
                        " keeps PostgreSQL's own; ignored with DATABASE_URL)")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    if not sizes or sizes[0] < 1 or args.chunks < 1 or args.build_pairs < 2:
        parser.error("sizes, --chunks and --build-pairs must be positive")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or REPO_ROOT / "bench" / "results" / f"{stamp}-state-size"
    results = run(sizes, args.chunks, args.build_pairs, args.seed, args.compare_full, out,
                  None if args.shared_buffers == "default" else args.shared_buffers)
    print(format_table(results))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
