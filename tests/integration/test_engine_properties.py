"""Property: random chunk sequences give the same detections, firing chunks and state in
PostgreSQL as in the plain-Python reference model (tests/reference_model.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import psycopg2.extensions
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from spark_detector import db
from spark_detector.chunk_aggregates import ChunkAggregates
from spark_detector.detection_state import ChunkRef, Thresholds, apply_chunk
from tests.reference_model import ReferenceEngine, chunk_from_rows

Y_START = datetime(2026, 1, 1, tzinfo=UTC)
CUSTOMERS = [f"C{i}" for i in range(8)]
MERCHANTS = ["M1", "M2", "M3"]
CATEGORIES = ["es_food", "es_travel"]

rows = st.tuples(
    st.sampled_from(CUSTOMERS),
    st.sampled_from(MERCHANTS),
    # cents, sometimes exactly 23.00 to hit the strict PatId2 boundary
    st.one_of(st.integers(0, 6000), st.just(2300)).map(lambda cents: Decimal(cents) / 100),
    st.sampled_from("FFMMEU"),
    st.sampled_from(CATEGORIES),
)
weights = st.dictionaries(
    st.tuples(st.sampled_from(CUSTOMERS), st.sampled_from(MERCHANTS), st.sampled_from(CATEGORIES)),
    # few distinct values, so percentile ties are common
    st.sampled_from([Decimal("0"), Decimal("1.5"), Decimal("2"), Decimal("2.0000000001"),
                     Decimal("7.25"), Decimal("100")]),
    min_size=8, max_size=40,
)
thresholds = st.builds(
    Thresholds,
    upgrade_min_total=st.integers(0, 15),
    upgrade_count_percentile=st.sampled_from([0.9, 0.5, 0.75, 1.0]),
    upgrade_weight_percentile=st.sampled_from([0.1, 0.0, 0.25, 0.5]),
    child_min_count=st.integers(1, 6),
    child_max_avg_amount=st.sampled_from([Decimal(23), Decimal("30.5")]),
    dei_min_female=st.integers(0, 2),
)


@st.composite
def chunk_sequences(draw) -> list[ChunkAggregates]:
    key_weights = draw(weights)
    chunks = []
    for i in range(draw(st.integers(1, 8))):
        chunk_rows = draw(st.lists(rows, min_size=1, max_size=25))
        chunks.append(chunk_from_rows(f"chunk-{i:03d}", chunk_rows, key_weights))
    # redeliveries: some chunks come again later
    repeats = draw(st.lists(st.sampled_from(chunks), max_size=3))
    return chunks + repeats


@pytest.fixture
def conn(migrated_database_url: str) -> Iterator[psycopg2.extensions.connection]:
    connection = db.connect(migrated_database_url)
    yield connection
    connection.close()


def reset(conn) -> None:
    with conn.cursor() as cur:
        cur.execute("TRUNCATE processed_chunks, rejected_chunks, pair_state, merchant_state,"
                    " pair_count_histogram, merchant_rule_state, weight_order, waiting_pairs,"
                    " detected_patterns, outbox_files")
    conn.commit()


def rows_of(conn, statement: str) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(statement)
        result = cur.fetchall()
    conn.rollback()
    return result


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=chunk_sequences(), limits=thresholds)
def test_engine_equals_reference_model(conn, chunks, limits):
    reset(conn)
    model = ReferenceEngine(limits)
    for aggregates in chunks:
        fired = apply_chunk(conn, ChunkRef(aggregates.chunk_key), aggregates,
                            y_start_time=Y_START, thresholds=limits)
        expected = model.apply(aggregates.chunk_key, aggregates)
        assert [(d.pattern_id, d.merchant_id, d.customer_name) for d in fired] == expected

    detections = rows_of(conn, "SELECT seq, pattern_id, merchant_id, customer_name, chunk_key,"
                         " txn_count, amount_sum, avg_weight, p90_count, p10_weight, female, male,"
                         " merchant_total FROM detected_patterns ORDER BY seq")
    assert detections == [
        (d.seq, d.pattern_id, d.merchant_id, d.customer_name, d.chunk_key, d.txn_count,
         d.amount_sum, d.avg_weight, d.p90_count, d.p10_weight, d.female, d.male,
         d.merchant_total)
        for d in model.detections
    ]
    for pattern in ("PatId1", "PatId2", "PatId3"):
        event(f"{pattern} fired: {any(d.pattern_id == pattern for d in model.detections)}")
    pairs = rows_of(conn, "SELECT merchant, customer, txn_count, amount_sum, weight_sum,"
                    " weighted_count, gender, avg_weight FROM pair_state ORDER BY 1, 2")
    assert pairs == [
        (m, c, s.txn_count, s.amount_sum, s.weight_sum, s.weighted_count, s.gender, s.avg_weight)
        for (m, c), s in sorted(model.pairs.items())
    ]
    merchants = rows_of(conn, "SELECT merchant, total, customers, female, male"
                        " FROM merchant_state ORDER BY 1")
    assert merchants == [
        (m, s.total, s.customers, s.female, s.male) for m, s in sorted(model.merchants.items())
    ]
    applied = rows_of(conn, "SELECT chunk_key FROM processed_chunks ORDER BY apply_order")
    assert [k for (k,) in applied] == model.applied
