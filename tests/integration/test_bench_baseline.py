"""The recompute-all baseline (``bench.baseline``), on the session's Spark and a few small chunk
files: it detects what the reference model detects, and its figure at the last chunk is the
median of that chunk's repeated recomputes."""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path

import pytest

from tests.support.workers import THRESHOLDS, expected_detections, split_chunks

pytestmark = pytest.mark.spark


def test_baseline_detects_what_the_reference_does_and_repeats_its_last_chunk(
        spark, dataset, tmp_path):
    from bench.baseline import run_baseline

    transactions, importance = dataset
    chunks = dict(list(split_chunks(transactions, 1_000).items())[:4])
    paths = []
    for key, body in chunks.items():
        paths.append(tmp_path / Path(key).name)
        paths[-1].write_bytes(body)
    (tmp_path / "importance.csv").write_bytes(importance)

    result = run_baseline(spark, paths, tmp_path / "importance.csv", THRESHOLDS,
                          last_repeats=3)

    assert len(result["per_chunk_ms"]) == 4
    runs = result["last_chunk_runs_ms"]
    assert len(runs) == 3 and runs[0] == result["per_chunk_ms"][-1]
    assert result["last_chunk_ms"] == statistics.median(runs)
    # the same keys, each fired after the same chunk
    reference = expected_detections(chunks, importance)
    assert result["fired"] == {(p, m, c): Path(k).name for _, p, m, c, k in reference}
    assert result["detections_per_pattern"] == dict(sorted(Counter(
        p for _, p, *_ in reference).items()))
    assert {p for _, p, *_ in reference} == {"PatId1", "PatId2", "PatId3"}
