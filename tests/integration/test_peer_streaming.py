"""The Structured Streaming peer (``python -m bench.peer_streaming``, docs/peers.md) as a real
process on a few small chunk files and the real PostgreSQL: with one file per trigger, in
production order, it detects what the worker's reference model detects, after the same chunks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import pytest

from tests.support.workers import expected_detections, split_chunks

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.spark, pytest.mark.timeout(300)]

# Small enough that all three patterns fire on the first 4,000 rows of the session's data set.
THRESHOLDS = {"PATID1_MIN_TOTAL": "200", "PATID2_MIN_COUNT": "4", "PATID3_MIN_FEMALE": "1"}
BAD_ROWS = [
    "0,'C1','3','F','28007','M1','28007','es_food',12.5,0,extra",  # one field too many
    "0,'C1','3','F','28007'",  # too few
    "0,'','3','F','28007','M1','28007','es_food',12.5,0",  # empty customer
    "0,'C1','3','F','28007','M1','28007','es_food','abc',0",  # not an amount
    "0,'C1','3','F','28007','M1','28007','es_food',-4.00,0",  # negative
]


def test_one_file_per_trigger_detects_what_the_reference_model_does(dataset, database_url,
                                                                     tmp_path):
    from spark_detector.engine.rules import thresholds_from_env

    transactions, importance = dataset
    chunks = {Path(key).name: body
              for key, body in list(split_chunks(transactions, 500).items())[:8]}
    names = sorted(chunks)
    chunks[names[1]] += ("\n".join(BAD_ROWS) + "\n").encode()  # the worker rejects these rows
    watched, out = tmp_path / "chunks", tmp_path / "out"
    watched.mkdir()
    now = time.time()
    for n, name in enumerate(names):  # all there before the start, oldest first
        (watched / name).write_bytes(chunks[name])
        os.utime(watched / name, (now - 100 + n, now - 100 + n))
    (tmp_path / "importance.csv").write_bytes(importance)

    done = subprocess.run(
        [sys.executable, "-m", "bench.peer_streaming", "--chunks-dir", str(watched),
         "--importance", str(tmp_path / "importance.csv"), "--database-url", database_url,
         "--out", str(out), "--max-files-per-trigger", "1", "--expect-chunks", "8",
         "--timeout", "180"],
        cwd=REPO, env={**os.environ, **THRESHOLDS}, capture_output=True, text=True, timeout=280)

    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["chunks"] == 8 and summary["batches"] == 8 and not summary["timed_out"]
    peer_chunks = [json.loads(line) for line in (out / "peer_chunks.jsonl").open()]
    assert [c["chunk_key"] for c in peer_chunks] == names
    assert [c["batch_id"] for c in peer_chunks] == list(range(8))

    expected = expected_detections(chunks, importance, thresholds_from_env(THRESHOLDS),
                                   prefix="")  # the peer's chunks are bare file names
    assert {p for _, p, _, _, _ in expected} == {"PatId1", "PatId2", "PatId3"}
    peer = [json.loads(line) for line in (out / "peer_detections.jsonl").open()]
    assert sorted((d["pattern_id"], d["merchant_id"], d["customer_name"], d["chunk_key"])
                  for d in peer) == sorted((p, m, c, k) for _, p, m, c, k in expected)
    assert summary["detections"] == len(expected)

    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM peer_streaming.detections")
        assert cur.fetchone()[0] == len(expected)
        cur.execute("SELECT count(*) FROM peer_streaming.batch_files")
        assert cur.fetchone()[0] == 8
        # the bad rows (all of merchant M1) were left out, every good row is counted
        cur.execute("SELECT sum(txn_count), count(*) FILTER (WHERE merchant = 'M1')"
                    " FROM peer_streaming.pair_totals")
        assert cur.fetchone() == (8 * 500, 0)
    conn.close()
