"""The incremental rule evaluation (``spark_detector.rule_evaluation``) against the full one it
replaced (``tests/full_evaluation.py``): the same random streams, with random thresholds, applied
to two databases; the detections, the chunk after which each fired and its evidence must be
equal, chunk by chunk.

The streams are made to reach every path of the incremental evaluation: ties in counts and in
weights, pairs without any weight, merchants crossing PatId1's minimum total mid-stream, floods
of new customers at count 1 that bring p90 down, thresholds changed between two runs over the
same state, p10 rising before p90 comes down (pairs start waiting in between), and (with
narrow tiers and floors: margins of 0 or 1 instead of 100 pairs and 2 counts) tiers that run
short or grow too large and floors p90 falls under, all rebuilt.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import psycopg2.extensions
import pytest

from infra.local import postgres
from spark_detector import db, rule_evaluation
from spark_detector.chunk_aggregates import ChunkAggregates, PairAggregate
from spark_detector.detection_state import ChunkRef, Thresholds, apply_chunk
from tests.full_evaluation import applying_in_full

Y_START = datetime(2026, 1, 1, tzinfo=UTC)
MERCHANTS = ("M1", "M2", "M3")
MERCHANT_SHARES = (6, 3, 1)
# few distinct weights, so that averages tie often
WEIGHTS = (Decimal("0"), Decimal("1.5"), Decimal("2"), Decimal("2.0000000001"), Decimal("7.25"),
           Decimal("100"))
DETECTIONS = ("SELECT seq, pattern_id, merchant_id, customer_name, chunk_key, apply_order,"
              " txn_count, amount_sum, avg_weight, p90_count, p10_weight, female, male,"
              " merchant_total FROM detected_patterns ORDER BY seq")


def random_thresholds(rng: random.Random, stream_rows: int) -> Thresholds:
    return Thresholds(
        # from "always" to "crossed late in the stream" for the largest merchant
        upgrade_min_total=rng.choice([0, 5, rng.randrange(stream_rows // 2 + 1)]),
        upgrade_count_percentile=rng.choice([0.9, 0.9, 0.5, 0.75, 1.0, 0.0, 0.33]),
        upgrade_weight_percentile=rng.choice([0.1, 0.1, 0.0, 0.25, 0.5, 1.0, 0.07]),
        child_min_count=rng.randint(1, 6),
        child_max_avg_amount=rng.choice([Decimal(23), Decimal("30.5")]),
        dei_min_female=rng.randint(0, 3),
    )


def random_stream(rng: random.Random, chunks: int) -> list[ChunkAggregates]:
    """Chunks of pairs on three merchants of uneven size; a fifth of the pairs without any
    weighted transaction. Now and then a flood of new customers at count 1 (p90 comes down),
    half the time without weights (p10 stays); now and then new customers with the heaviest
    weights only (p10 rises)."""
    customers = 0
    stream = []
    for number in range(1, chunks + 1):
        kind = rng.choices(["mixed", "flood", "unweighted flood", "heavy"], [14, 2, 2, 2])[0]
        pairs: dict[tuple[str, str], PairAggregate] = {}
        for _ in range(rng.randint(1, 35) if kind == "mixed" else rng.randint(20, 60)):
            merchant = rng.choices(MERCHANTS, MERCHANT_SHARES)[0]
            if kind != "mixed" or customers == 0 or rng.random() < 0.3:
                customer = f"C{customers:04d}"
                customers += 1
            else:
                customer = f"C{rng.randrange(customers):04d}"
            count = 1 if "flood" in kind else rng.choice([1, 1, 2, 3, 5, 8])
            if kind == "unweighted flood" or (kind != "heavy" and rng.random() < 0.2):
                weighted, weight_sum = 0, Decimal(0)
            else:
                weighted = rng.randint(1, count)
                heaviest = WEIGHTS[-2:] if kind == "heavy" else WEIGHTS
                weight_sum = sum(rng.choice(heaviest) for _ in range(weighted))
            cents = rng.choice([500, 2299, 2300, 2301, 4000])
            pairs.setdefault((merchant, customer), PairAggregate(
                merchant, customer, count, Decimal(cents * count) / 100, Decimal(weight_sum),
                weighted, rng.choice("FFMMEU")))
        ordered = tuple(pairs[key] for key in sorted(pairs))
        stream.append(ChunkAggregates(f"chunk-{number:03d}", sum(p.txn_count for p in ordered),
                                      0, ordered))
    return stream


@pytest.fixture
def two_databases(postgres_server_url: str, migrated_template: str,
                  ) -> Iterator[tuple[psycopg2.extensions.connection, ...]]:
    with postgres.scratch_database(postgres_server_url, "test", template=migrated_template) as a, \
            postgres.scratch_database(postgres_server_url, "test", template=migrated_template) as b:
        connections = db.connect(a), db.connect(b)
        try:
            yield connections
        finally:
            for conn in connections:
                conn.close()


def reset(*connections: psycopg2.extensions.connection) -> None:
    for conn in connections:
        with conn.cursor() as cur:
            cur.execute("TRUNCATE processed_chunks, pair_state, merchant_state,"
                        " pair_count_histogram, merchant_rule_state, weight_order, waiting_pairs,"
                        " detected_patterns, outbox_files")
        conn.commit()


def rows(conn: psycopg2.extensions.connection, statement: str) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(statement)
        result = cur.fetchall()
    conn.rollback()
    return result


def fired(detections) -> list[tuple[str, str, str]]:
    return [(d.pattern_id, d.merchant_id, d.customer_name) for d in detections]


def run_both(incremental, full, seed: int) -> dict[str, int]:
    """One random stream, one or two runs of thresholds, on both databases; what it exercised."""
    rng = random.Random(seed)
    stream = random_stream(rng, rng.randint(12, 30))
    rows_in_stream = sum(c.rows_good for c in stream)
    first = random_thresholds(rng, rows_in_stream)
    second = random_thresholds(rng, rows_in_stream) if rng.random() < 0.4 else first
    switch = rng.randrange(1, len(stream)) if second is not first else len(stream)
    for number, aggregates in enumerate(stream):
        limits = first if number < switch else second
        ref = ChunkRef(aggregates.chunk_key)
        got = apply_chunk(incremental, ref, aggregates, y_start_time=Y_START, thresholds=limits)
        with applying_in_full():
            want = apply_chunk(full, ref, aggregates, y_start_time=Y_START, thresholds=limits)
        assert fired(got) == fired(want), f"seed {seed}, {aggregates.chunk_key}"
    assert rows(incremental, DETECTIONS) == rows(full, DETECTIONS), f"seed {seed}"
    return dict(rows(incremental, "SELECT pattern_id, count(*) FROM detected_patterns GROUP BY 1"))


@pytest.mark.parametrize(("tier_factor", "tier_margin", "waiting_fraction", "waiting_margin"), [
    (rule_evaluation.TIER_FACTOR, rule_evaluation.TIER_MARGIN, rule_evaluation.WAITING_FRACTION,
     rule_evaluation.WAITING_MARGIN),
    (1, 0, 0.0, 1),
    (2, 1, 0.1, 0),
])
def test_incremental_evaluation_fires_what_the_full_one_fires(
        two_databases, monkeypatch, caplog, tier_factor: int, tier_margin: int,
        waiting_fraction: float, waiting_margin: int):
    monkeypatch.setattr(rule_evaluation, "TIER_FACTOR", tier_factor)
    monkeypatch.setattr(rule_evaluation, "TIER_MARGIN", tier_margin)
    monkeypatch.setattr(rule_evaluation, "WAITING_FRACTION", waiting_fraction)
    monkeypatch.setattr(rule_evaluation, "WAITING_MARGIN", waiting_margin)
    caplog.set_level(logging.INFO, logger=rule_evaluation.__name__)
    incremental, full = two_databases
    exercised: dict[str, int] = {}
    for seed in range(8):
        reset(incremental, full)
        for pattern, count in run_both(incremental, full, seed * 31 + tier_margin).items():
            exercised[pattern] = exercised.get(pattern, 0) + count
    # the streams are not vacuous: every rule fired, PatId1 many times
    assert exercised.get("PatId1", 0) > 20 and exercised.get("PatId2") and exercised.get("PatId3")
    # and the structures never disagreed with the state (that falls back to a full evaluation)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    reasons = {m["reason"] for r in caplog.records for m in getattr(r, "merchants", [])
               if isinstance(m, dict)}
    assert {"thresholds", "crossed"} <= reasons
    if tier_margin < 10:  # tiers and floors as narrow as the streams' merchants: rebuilt
        assert {"tier oversize", "waiting short"} <= reasons
        assert "tier short" in reasons or tier_factor > 1
