"""PostgreSQL apply throughput with the state partitioned by merchant into 1, 2 and 4 shards.

    .venv/bin/python -m bench.bench_shards [--chunks 60] [--shards 1 2 4] [--seed 7]

The serial apply (``detection_state.apply_chunk``, one transaction per chunk under one advisory
lock) is the worker's throughput ceiling (docs/scaling.md). Every rule is per merchant, so
the state can be split by merchant: this bench splits each chunk's pair aggregates by
``crc32(merchant) % shards``, gives each shard its own database (its own engine schema and
advisory lock), and lets one process per shard apply its part of every chunk, in chunk
order, in parallel with the other shards. Same chunks for every shard count: the synthetic
BankSim-shaped stream of ``bench.bench_apply`` (10,000 rows a chunk, two merchants
holding ~85% of the rows, as in BankSim).

It prints one JSON object: per shard count and shard map, each shard's pairs; each shard's
apply time *alone* (the machine to itself, one shard after the other: the critical path if
every shard had its own cores and database server) and the rows/s that implies; all shards
*together* on this machine (wall time from the common start to the last shard's end, and
rows/s); the load average; and whether the shards' detections, merged in (apply order,
pattern, merchant, customer) order, equal the single database's detections in its seq
order - the exactness argument of docs/scaling.md checked on this data.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import replace
from datetime import UTC, datetime
from multiprocessing import Manager
from typing import Any

from bench.bench_apply import synthetic_stream
from infra.local import postgres
from infra.local.interrupt import stops_cleanly
from spark_detector import db
from spark_detector.chunk_aggregates import ChunkAggregates
from spark_detector.engine.state import ChunkRef, apply_chunk


def hashed_shards(merchants: Iterable[str], shards: int) -> dict[str, int]:
    """Each merchant's shard by a stable hash (``hash`` is salted per process)."""
    return {m: zlib.crc32(m.encode()) % shards for m in merchants}


def balanced_shards(chunks: list[ChunkAggregates], shards: int) -> dict[str, int]:
    """A shard map balanced by the merchants' pair counts (largest first, to the lightest
    shard). BankSim's two biggest merchants hold ~85% of the rows: a hash may put both in
    one shard; a map kept in a table can place them apart."""
    load = Counter(pair.merchant for chunk in chunks for pair in chunk.pairs)
    totals = [0] * shards
    assignment: dict[str, int] = {}
    for merchant, pairs in sorted(load.items(), key=lambda item: (-item[1], item[0])):
        shard = totals.index(min(totals))
        assignment[merchant] = shard
        totals[shard] += pairs
    return assignment


def split_chunk(chunk: ChunkAggregates, shard_map: Mapping[str, int], shards: int
                ) -> list[ChunkAggregates]:
    """The chunk's pairs by merchant shard; every shard gets the chunk (maybe empty), so each
    records every chunk in the same apply order. Rejected rows are counted in shard 0."""
    parts = [[] for _ in range(shards)]
    for pair in chunk.pairs:
        parts[shard_map[pair.merchant]].append(pair)
    return [replace(chunk, pairs=tuple(pairs), rows_good=sum(p.txn_count for p in pairs),
                    rows_rejected=chunk.rows_rejected if shard == 0 else 0)
            for shard, pairs in enumerate(parts)]


def apply_shard(url: str, chunks: list[ChunkAggregates], start: Any) -> dict:
    """Apply one shard's part of every chunk, in order, once every shard is connected and
    holds its data (``start``, a barrier shared by the shards, so that none gets a head
    start); its timings and its detections."""
    conn = db.connect(url)
    try:
        y_start = datetime.now(UTC)
        start.wait()
        started = time.time()
        for chunk in chunks:
            apply_chunk(conn, ChunkRef(chunk.chunk_key), chunk, y_start_time=y_start)
        ended = time.time()
        with conn.cursor() as cur:
            cur.execute("SELECT apply_order, pattern_id, merchant_id, customer_name, chunk_key"
                        " FROM detected_patterns ORDER BY seq")
            detections = [tuple(row) for row in cur.fetchall()]
        conn.rollback()
    finally:
        conn.close()
    return {"started": started, "ended": ended, "detections": detections,
            "pairs": sum(len(c.pairs) for c in chunks)}


def apply_concurrently(server_url: str, parts: list[list[ChunkAggregates]]) -> list[dict]:
    """One process and one fresh database per part, all starting to apply at the same time."""
    with ExitStack() as stack, Manager() as manager:
        urls = list(migrated_databases(stack, server_url, len(parts)))
        start = manager.Barrier(len(parts))
        with ProcessPoolExecutor(max_workers=len(parts)) as pool:
            return list(pool.map(apply_shard, urls, parts, [start] * len(parts)))


def migrated_databases(stack: ExitStack, server_url: str, count: int) -> Iterator[str]:
    for _ in range(count):
        url = stack.enter_context(postgres.scratch_database(server_url, "shard"))
        conn = db.connect(url)
        try:
            db.migrate(conn)
        finally:
            conn.close()
        yield url


def merged_order(shard_detections: list[list[tuple]]) -> list[tuple]:
    """The shards' detections in the single engine's order: by chunk, then as it numbers a
    chunk's detections (pattern, merchant, customer, byte order - its COLLATE "C")."""
    rows = [row for detections in shard_detections for row in detections]
    return sorted(rows, key=lambda r: (r[0], r[1], r[2].encode(), r[3].encode()))


def run(chunk_count: int, shard_counts: list[int], seed: int) -> dict:
    chunks = list(synthetic_stream(seed, chunk_count))
    rows = sum(c.rows_good for c in chunks)
    merchants = sorted({pair.merchant for chunk in chunks for pair in chunk.pairs})
    results: dict[str, dict] = {}
    reference: list[tuple] | None = None
    load_before = os.getloadavg()
    cases = [(shards, how) for shards in shard_counts
             for how in (["balanced", "hashed"] if shards > 1 else ["one"])]
    with postgres.scratch_server("bench-shards") as server_url:
        for shards, how in cases:
            shard_map = (balanced_shards(chunks, shards) if how == "balanced"
                         else hashed_shards(merchants, shards))
            split = [split_chunk(c, shard_map, shards) for c in chunks]
            parts = [[chunk_parts[s] for chunk_parts in split] for s in range(shards)]
            together = apply_concurrently(server_url, parts)
            wall = max(o["ended"] for o in together) - min(o["started"] for o in together)
            alone = [apply_concurrently(server_url, [part])[0] for part in parts]
            alone_s = [o["ended"] - o["started"] for o in alone]
            merged = merged_order([o["detections"] for o in together])
            if reference is None:
                reference = merged
            results[f"{shards} {how}"] = {
                "shard_pairs": [o["pairs"] for o in together],
                # each shard's part applied with the machine to itself: the critical path
                # if every shard had its own cores and database server
                "alone_shard_s": [round(t, 2) for t in alone_s],
                "alone_rows_per_s": round(rows / max(alone_s)),
                # all shards at once on this machine's cores
                "together_shard_s": [round(o["ended"] - o["started"], 2) for o in together],
                "together_wall_s": round(wall, 2),
                "together_rows_per_s": round(rows / wall),
                "detections": len(merged),
                "detections_equal_one_shard": merged == reference
                and merged_order([o["detections"] for o in alone]) == reference,
            }
    return {
        "chunks": len(chunks), "rows": rows, "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "shards": results,
    }


@stops_cleanly("bench.bench_shards")
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=60)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print(json.dumps(run(args.chunks, args.shards, args.seed), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
