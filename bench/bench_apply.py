"""Time ``apply_chunk`` on 10,000-row chunks against a full-size state.

    python -m bench.bench_apply [--extra-chunks 40] [--seed 7]
    python -m bench.bench_apply --transactions transactions.csv \
        --importance CustomerImportance.csv [--extra-chunks 0]

Builds a synthetic stream shaped like the BankSim data (594,643 rows, 50 merchants, two with
~300k and ~205k transactions and ~4,000 customers each, ~47k (merchant, customer) pairs, every
transaction weighted), applies it in 10,000-row chunks with the default thresholds, then
applies ``--extra-chunks`` more chunks against the full state. Prints one JSON object: apply
times (median / p99, wall time of the ``apply_chunk`` call including its commit) and the
detection counts per pattern. With ``--transactions`` and ``--importance`` it replays those
files (BankSim format) in 10,000-row chunks instead of the synthetic stream. Uses
``DATABASE_URL`` (a fresh database is created on that server) or, when unset, an embedded
PostgreSQL in a temporary directory.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from bench.measure import percentile_cont
from infra.local import postgres
from infra.local.interrupt import stops_cleanly
from spark_detector import db
from spark_detector.chunk_aggregates import (
    ChunkAggregates,
    Transaction,
    build_aggregates,
    key_weights,
)
from spark_detector.engine.state import ChunkRef, apply_chunk

TOTAL_ROWS = 594_643
CHUNK_ROWS = 10_000
CUSTOMERS = 4_112
# (transactions, customers) of the biggest merchants in the real data; the other 47 share the rest.
BIG_MERCHANTS = [(299_693, 4_000), (205_426, 3_900), (26_254, 3_000)]
SMALL_MERCHANTS = 47


def synthetic_stream(seed: int, chunks: int) -> Iterator[ChunkAggregates]:
    """``chunks`` chunks of 10,000 rows drawn from one fixed BankSim-like population."""
    rng = random.Random(seed)
    customers = [f"C{1_000_000 + i}" for i in range(CUSTOMERS)]
    gender = {c: rng.choices("FMEU", weights=(546, 451, 2, 1))[0] for c in customers}
    rest = TOTAL_ROWS - sum(n for n, _ in BIG_MERCHANTS)
    small_counts = [max(3, int(rest * w)) for w in _zipf_weights(SMALL_MERCHANTS, rng)]
    merchants: list[tuple[str, int, list[str]]] = []
    for i, (count, pool) in enumerate(BIG_MERCHANTS + [(n, None) for n in small_counts]):
        pool_size = pool if pool is not None else max(1, min(CUSTOMERS, int(count * 0.75)))
        merchants.append((f"M{100_000 + i}", count, rng.sample(customers, pool_size)))
    names = [m for m, _, _ in merchants]
    counts = [n for _, n, _ in merchants]
    pools = {m: pool for m, _, pool in merchants}
    weights = {
        (c, m, "es_transportation"): Decimal(rng.randint(1, 10_000)) / 100
        for m, _, pool in merchants for c in pool
    }
    for number in range(1, chunks + 1):
        picks = rng.choices(names, weights=counts, k=CHUNK_ROWS)
        rows = []
        for row, merchant in enumerate(picks, start=1):
            customer = rng.choice(pools[merchant])
            amount = Decimal(int(rng.expovariate(1 / 3_700))) / 100
            rows.append(Transaction(row, customer, merchant, "es_transportation",
                                    gender[customer], amount))
        yield build_aggregates(f"stream_chunks/chunk-{number:08d}.csv", rows, weights)


def _clean(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1]
    return value


def replay_stream(transactions: Path, importance: Path) -> Iterator[ChunkAggregates]:
    """The files' rows in 10,000-row chunks (a bench reader: it assumes well-formed input)."""
    with importance.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader)
        weights = key_weights(
            ((_clean(src), _clean(dst), _clean(cat)), Decimal(_clean(w)))
            for src, dst, w, cat, _fraud in reader
        )
    with transactions.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader)
        rows: list[Transaction] = []
        number = 0
        for record in reader:
            _step, customer, _age, gender, _zip, merchant, _zm, category, amount, _fraud = record
            rows.append(Transaction(len(rows) + 1, _clean(customer), _clean(merchant),
                                    _clean(category), _clean(gender), Decimal(_clean(amount))))
            if len(rows) == CHUNK_ROWS:
                number += 1
                yield build_aggregates(f"stream_chunks/chunk-{number:08d}.csv", rows, weights)
                rows = []
        if rows:
            yield build_aggregates(f"stream_chunks/chunk-{number + 1:08d}.csv", rows, weights)


def _zipf_weights(n: int, rng: random.Random) -> list[float]:
    raw = [1 / (rank + 1) for rank in range(n)]
    rng.shuffle(raw)
    total = sum(raw)
    return [w / total for w in raw]


def _summary(times_ms: list[float]) -> dict[str, float]:
    return {
        "chunks": len(times_ms),
        "median_ms": round(statistics.median(times_ms), 1),
        "p99_ms": round(percentile_cont(times_ms, 0.99), 1),
        "max_ms": round(max(times_ms), 1),
    }


def run(extra_chunks: int, seed: int, files: tuple[Path, Path] | None = None) -> dict:
    full_chunks = -(-TOTAL_ROWS // CHUNK_ROWS)
    if files is None:
        stream = synthetic_stream(seed, full_chunks + extra_chunks)
    else:
        stream = replay_stream(*files)
        extra_chunks = 0
    y_start = datetime.now(UTC)
    with postgres.scratch_server("bench") as server_url, \
            postgres.scratch_database(server_url, "bench") as url:
        conn = db.connect(url)
        try:
            db.migrate(conn)
            times: list[float] = []
            pairs: list[int] = []
            for aggregates in stream:
                started = time.perf_counter()
                apply_chunk(conn, ChunkRef(aggregates.chunk_key), aggregates,
                            y_start_time=y_start)
                times.append((time.perf_counter() - started) * 1000)
                pairs.append(len(aggregates.pairs))
            with conn.cursor() as cur:
                cur.execute("SELECT pattern_id, count(*) FROM detected_patterns GROUP BY 1"
                            " ORDER BY 1")
                detections = dict(cur.fetchall())
                cur.execute("SELECT pattern_id, min(apply_order), max(apply_order)"
                            " FROM detected_patterns GROUP BY 1 ORDER BY 1")
                firing = {p: [first, last] for p, first, last in cur.fetchall()}
                cur.execute("SELECT count(*) FROM pair_state")
                (state_pairs,) = cur.fetchone()
                cur.execute("SELECT count(*), max(total) FROM merchant_state")
                merchant_count, biggest = cur.fetchone()
            conn.rollback()
        finally:
            conn.close()
    return {
        "chunk_rows": CHUNK_ROWS,
        "pairs_per_chunk_median": statistics.median(pairs),
        "state_pairs": state_pairs,
        "merchants": merchant_count,
        "largest_merchant_total": biggest,
        "first_full_pass": _summary(times[:full_chunks]),
        "against_full_state": _summary(times[full_chunks:]) if extra_chunks else None,
        "chunk_5_ms": round(times[4], 1),
        "chunk_60_ms": round(times[min(59, len(times) - 1)], 1),
        "detections_per_pattern": detections,
        "first_and_last_firing_chunk": firing,
        "source": "synthetic" if files is None else [str(f) for f in files],
    }


@stops_cleanly("bench.bench_apply")
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra-chunks", type=int, default=40)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--transactions", type=Path, help="replay this transactions.csv")
    parser.add_argument("--importance", type=Path, help="with its CustomerImportance.csv")
    args = parser.parse_args()
    if (args.transactions is None) != (args.importance is None):
        parser.error("--transactions and --importance go together")
    files = (args.transactions, args.importance) if args.transactions else None
    print(json.dumps(run(args.extra_chunks, args.seed, files), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
