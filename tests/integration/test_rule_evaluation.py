"""The incremental rule evaluation on a database the previous engine filled: after migration 0007
every merchant is evaluated in full the first time a chunk touches it, then incrementally, and
the detections are the reference model's."""

from __future__ import annotations

import random
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from spark_detector import db
from spark_detector.detection_state import ChunkRef, Thresholds, apply_chunk
from tests.integration.test_rule_evaluation_differential import random_stream
from tests.reference_model import ReferenceEngine

Y_START = datetime(2026, 1, 1, tzinfo=UTC)
LIMITS = Thresholds(upgrade_min_total=30, child_min_count=3, dei_min_female=1)
DETECTIONS = ("SELECT seq, pattern_id, merchant_id, customer_name, chunk_key, txn_count,"
              " amount_sum, avg_weight, p90_count, p10_weight, female, male, merchant_total"
              " FROM detected_patterns ORDER BY seq")


@pytest.fixture
def migrations_before_0007(tmp_path: Path) -> Path:
    folder = tmp_path / "migrations"
    folder.mkdir()
    for migration in db.available_migrations():
        if migration.version < 7:
            shutil.copy(db.MIGRATIONS_DIR / f"{migration.name}.sql", folder)
    return folder


def write_as_the_previous_engine(conn, model: ReferenceEngine) -> None:
    """The state, chunks and detections of ``model`` in the tables the previous engine had."""
    with conn.cursor() as cur:
        for order, key in enumerate(model.applied, 1):
            cur.execute("INSERT INTO processed_chunks (chunk_key, apply_order, rows_good,"
                        " rows_rejected, pairs) VALUES (%s, %s, 0, 0, 0)", (key, order))
        for (merchant, customer), s in model.pairs.items():
            first = model.applied.index(s.first_chunk) + 1
            cur.execute("INSERT INTO pair_state (merchant, customer, txn_count, amount_sum,"
                        " weight_sum, weighted_count, gender, first_apply_order,"
                        " last_apply_order) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                        (merchant, customer, s.txn_count, s.amount_sum, s.weight_sum,
                         s.weighted_count, s.gender, first, first))
        for merchant, s in model.merchants.items():
            cur.execute("INSERT INTO merchant_state (merchant, total, customers, female, male)"
                        " VALUES (%s, %s, %s, %s, %s)",
                        (merchant, s.total, s.customers, s.female, s.male))
        for d in model.detections:
            cur.execute(
                "INSERT INTO detected_patterns (seq, pattern_id, action_type, customer_name,"
                " merchant_id, chunk_key, apply_order, y_start_time, txn_count, amount_sum,"
                " avg_amount, avg_weight, p90_count, p10_weight, female, male, merchant_total)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, NULL, %s, %s, %s, %s, %s, %s)",
                (d.seq, d.pattern_id, d.action_type, d.customer_name, d.merchant_id,
                 d.chunk_key, d.apply_order, Y_START, d.txn_count, d.amount_sum, d.avg_weight,
                 d.p90_count, d.p10_weight, d.female, d.male, d.merchant_total))
    conn.commit()


@pytest.mark.parametrize("seed", [3, 4])
def test_a_database_of_the_previous_engine_goes_on_with_the_same_detections(
        database_url, migrations_before_0007, seed):
    stream = random_stream(random.Random(seed), 24)
    model = ReferenceEngine(LIMITS)
    for aggregates in stream[:12]:
        model.apply(aggregates.chunk_key, aggregates)
    conn = db.connect(database_url)
    try:
        db.migrate(conn, migrations_before_0007)
        write_as_the_previous_engine(conn, model)
        db.migrate(conn)  # 0007: the count histogram and the weighted customers filled in
        with conn.cursor() as cur:
            cur.execute("SELECT merchant, sum(txn_count * customers) FROM pair_count_histogram"
                        " GROUP BY 1 ORDER BY 1")
            assert cur.fetchall() == sorted((m, s.total) for m, s in model.merchants.items())
            cur.execute("SELECT count(*) FROM merchant_rule_state")
            assert cur.fetchone() == (0,)
        conn.rollback()

        for aggregates in stream[12:]:
            fired = apply_chunk(conn, ChunkRef(aggregates.chunk_key), aggregates,
                                y_start_time=Y_START, thresholds=LIMITS)
            expected = model.apply(aggregates.chunk_key, aggregates)
            assert [(d.pattern_id, d.merchant_id, d.customer_name) for d in fired] == expected
        with conn.cursor() as cur:
            cur.execute(DETECTIONS)
            got = cur.fetchall()
            cur.execute("SELECT count(*) FROM merchant_rule_state")
            (records,) = cur.fetchone()
        conn.rollback()
    finally:
        conn.close()
    assert got == [(d.seq, d.pattern_id, d.merchant_id, d.customer_name, d.chunk_key,
                    d.txn_count, d.amount_sum, d.avg_weight, d.p90_count, d.p10_weight,
                    d.female, d.male, d.merchant_total) for d in model.detections]
    assert len(model.detections) > 5 and records == len(model.merchants)
