"""Warm timings of ``spark_job.aggregate_batch`` on 1 and on 10 chunks of 10,000 rows.

    .venv/bin/python -m bench.bench_aggregate_batch [--csv PATH] [--repeats 7]

S3 is a moto server on 127.0.0.1 (started here); Spark is ``build_spark()`` (local[2]).
The chunk is ``--csv`` when given (e.g. the first 10,000 rows of BankSim's file), else a
generated BankSim-like one; CustomerImportance is derived from it (one row per transaction,
Weight = amount), as in the real reference file. Prints one JSON line per case with min /
median / max ms.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import boto3
from moto.server import ThreadedMotoServer

from infra.local.interrupt import stops_cleanly
from spark_detector.spark.batch_result import weight_table
from spark_detector.spark.job import FetchSpec, aggregate_batch
from spark_detector.spark.reference_weights import compute_weights
from spark_detector.spark.session import build_spark

HEADER = "step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud"


def generated_chunk(rows: int = 10_000, seed: int = 7) -> bytes:
    rng = random.Random(seed)
    categories = ["es_transportation", "es_food", "es_health", "es_wellnessandbeauty"]
    lines = [HEADER]
    for _ in range(rows):
        lines.append(
            f"0,'C{rng.randrange(4112)}','{rng.randrange(7)}','{rng.choice('FMEU')}','28007',"
            f"'M{rng.randrange(50)}','28007','{rng.choice(categories)}',"
            f"{rng.randrange(1, 30000) / 100},0"
        )
    return ("\n".join(lines) + "\n").encode()


def customer_importance(chunk: bytes) -> bytes:
    out = ["Source,Target,Weight,typeTrans,fraud"]
    for line in chunk.decode().splitlines()[1:]:
        f = line.split(",")
        out.append(f"{f[1]},{f[5]},{f[8]},{f[7]},0")
    return ("\n".join(out) + "\n").encode()


@stops_cleanly("bench.bench_aggregate_batch")
def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--csv", type=Path, help="a chunk of transactions (BankSim format)")
    parser.add_argument("--importance", type=Path, default=None,
                        help="a CustomerImportance file (default: derived from the chunk)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    chunk = args.csv.read_bytes() if args.csv else generated_chunk()

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
    creds = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **creds)
    s3.create_bucket(Bucket="bench")
    keys = [f"stream_chunks/chunk-{i:08d}.csv" for i in range(10)]
    for key in keys:
        s3.put_object(Bucket="bench", Key=key, Body=chunk)
    spec = FetchSpec("bench", endpoint_url=endpoint, access_key_id="bench",
                     secret_access_key="bench")
    spark = build_spark()
    spark.sparkContext.setLogLevel("ERROR")
    try:
        started = time.perf_counter()
        importance = args.importance.read_bytes() if args.importance else None
        weights, _ = compute_weights(importance or customer_importance(chunk), "importance")
        table = weight_table(weights)
        elapsed = time.perf_counter() - started
        print(json.dumps({"case": "compute_weights", "keys": len(weights),
                          "ms": round(1000 * elapsed)}))
        for _ in range(5):  # warm-up, as in a running worker: JVM JIT, Python workers, S3 client
            aggregate_batch(spark, spec, keys[:1], table)
            aggregate_batch(spark, spec, keys, table)
        for batch in (keys[:1], keys):
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                result = aggregate_batch(spark, spec, batch, table)
                times.append(1000 * (time.perf_counter() - started))
            rows = sum(a.rows_good + a.rows_rejected for a in result.aggregates.values())
            print(json.dumps({
                "case": f"aggregate_batch {len(batch)} chunk(s)", "rows": rows,
                "min_ms": round(min(times)), "median_ms": round(statistics.median(times)),
                "max_ms": round(max(times)),
                "rows_per_s_median": round(rows / statistics.median(times) * 1000),
            }))
    finally:
        spark.stop()
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
