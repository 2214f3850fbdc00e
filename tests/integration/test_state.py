"""The detection engine against a real PostgreSQL: rules, emit-once, idempotence, concurrency."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime
from decimal import Decimal

import psycopg2.errors
import psycopg2.extensions
import pytest

from spark_detector import db
from spark_detector.chunk_aggregates import ChunkAggregates
from spark_detector.config import WorkerSettings
from spark_detector.engine.rules import Thresholds
from spark_detector.engine.state import (
    ChunkRef,
    InvalidAggregates,
    apply_chunk,
    chunk_status,
    done_chunk_keys,
    prepare_pairs,
    record_rejected_chunk,
    try_apply_chunk,
)
from spark_detector.worker.database import ping
from spark_detector.worker.loop import Worker
from tests.reference_model import ReferenceEngine, chunk_from_rows
from tests.support.locks import held_until_contended

Y_START = datetime(2026, 11, 27, 4, 0, 0, 123000, tzinfo=UTC)
SMALL = Thresholds(
    upgrade_min_total=10, child_min_count=3, child_max_avg_amount=Decimal(23), dei_min_female=1
)


@pytest.fixture
def conn(migrated_database_url: str) -> Iterator[psycopg2.extensions.connection]:
    connection = db.connect(migrated_database_url)
    yield connection
    connection.close()


def apply(conn, aggregates: ChunkAggregates, thresholds: Thresholds = SMALL):
    return apply_chunk(
        conn, ChunkRef(aggregates.chunk_key), aggregates, y_start_time=Y_START,
        thresholds=thresholds,
    )


def keys(detections) -> list[tuple[str, str, str]]:
    return [(d.pattern_id, d.merchant_id, d.customer_name) for d in detections]


def query(conn, statement: str, params=None) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(statement, params)
        rows = cur.fetchall()
    conn.rollback()
    return rows


def test_child_fires_once_when_average_drops_under_23_and_never_again(conn):
    cheap = chunk_from_rows("c1", [("C1", "M1", "5.00", "F")] * 3)
    assert keys(apply(conn, cheap)) == [("PatId2", "M1", "C1")]
    dear = chunk_from_rows("c2", [("C1", "M1", "500.00", "F")])
    assert apply(conn, dear) == []
    cheap_again = chunk_from_rows("c3", [("C1", "M1", "0.01", "F")] * 200)
    assert apply(conn, cheap_again) == []
    assert query(conn, "SELECT pattern_id, chunk_key, txn_count, avg_amount FROM detected_patterns"
                 ) == [("PatId2", "c1", 3, Decimal("5.000000"))]


def test_child_needs_strictly_less_than_23_on_average(conn):
    exactly = chunk_from_rows("c1", [("C1", "M1", "23.00", "F")] * 3)
    assert apply(conn, exactly) == []
    one_cent_less = chunk_from_rows("c2", [("C1", "M1", "22.99", "F")] * 3)
    assert keys(apply(conn, one_cent_less)) == [("PatId2", "M1", "C1")]


def test_a_chunk_applied_twice_changes_nothing_the_second_time(conn):
    chunk = chunk_from_rows("c1", [("C1", "M1", "5", "F")] * 3, rows_rejected=2)
    first = apply(conn, chunk)
    state_before = query(conn, "SELECT * FROM pair_state")
    assert len(first) == 1
    assert apply(conn, chunk) == []
    assert query(conn, "SELECT * FROM pair_state") == state_before
    assert query(conn, "SELECT chunk_key, apply_order, rows_good, rows_rejected, pairs,"
                 " detections FROM processed_chunks") == [("c1", 1, 3, 2, 1, 1)]
    assert chunk_status(conn, "c1") == "applied"


def test_a_rejected_chunk_is_never_applied_and_an_applied_one_never_rejected(conn):
    assert record_rejected_chunk(conn, ChunkRef("bad"), "no header", "quarantine/bad")
    assert not record_rejected_chunk(conn, ChunkRef("bad"), "again", "quarantine/bad")
    assert apply(conn, chunk_from_rows("bad", [("C1", "M1", "5", "F")] * 3)) == []
    apply(conn, chunk_from_rows("good", [("C1", "M1", "5", "F")]))
    assert not record_rejected_chunk(conn, ChunkRef("good"), "late", "quarantine/good")
    assert chunk_status(conn, "bad") == "rejected"
    assert chunk_status(conn, "good") == "applied"
    assert chunk_status(conn, "never") is None
    assert done_chunk_keys(conn, ["bad", "good", "never", "good"]) == {"bad", "good"}
    assert done_chunk_keys(conn, []) == set()
    assert query(conn, "SELECT count(*) FROM pair_state") == [(1,)]


def test_dei_counts_distinct_customers_by_first_gender_ignoring_e_and_u(conn):
    thresholds = Thresholds(dei_min_female=1)
    # C1 is first seen as F by M1, later as M: the pair's gender stays F.
    chunk1 = chunk_from_rows("c1", [
        ("C1", "M1", "10", "F"), ("C1", "M1", "10", "M"), ("C2", "M1", "10", "F"),
        ("C3", "M1", "10", "M"), ("C4", "M1", "10", "E"), ("C5", "M1", "10", "U"),
        ("C6", "M1", "10", "U"),
    ])
    assert apply(conn, chunk1, thresholds) == []  # female 2, male 1
    chunk2 = chunk_from_rows("c2", [("C1", "M1", "10", "M"), ("C7", "M1", "10", "M")])
    assert apply(conn, chunk2, thresholds) == []  # female 2, male 2: not fewer
    chunk3 = chunk_from_rows("c3", [("C8", "M1", "10", "M"), ("C4", "M1", "10", "M")])
    fired = apply(conn, chunk3, thresholds)  # C4 stays E: female 2, male 3
    assert keys(fired) == [("PatId3", "M1", "")]
    assert (fired[0].female, fired[0].male, fired[0].merchant_total) == (2, 3, 11)
    assert query(conn, "SELECT total, customers, female, male FROM merchant_state") == [
        (11, 8, 2, 3)
    ]
    assert query(conn, "SELECT gender FROM pair_state WHERE customer = 'C1'") == [("F",)]


def test_dei_needs_more_than_the_minimum_of_female_customers(conn):
    thresholds = Thresholds(dei_min_female=2)
    rows = [("C1", "M1", "1", "F"), ("C2", "M1", "1", "F"), ("C3", "M1", "1", "M"),
            ("C4", "M1", "1", "M"), ("C5", "M1", "1", "M")]
    assert apply(conn, chunk_from_rows("c1", rows), thresholds) == []
    more = [("C6", "M1", "1", "F"), ("C7", "M1", "1", "M"), ("C8", "M1", "1", "M")]
    assert keys(apply(conn, chunk_from_rows("c2", more), thresholds)) == [("PatId3", "M1", "")]


def weighted(rows, weight_of):
    """Rows with category = customer, and a weight per customer's key."""
    weights = {(c, m, c): Decimal(weight_of[c]) for c, m, *_ in rows if c in weight_of}
    return [(c, m, a, g, c) for c, m, a, g in rows], weights


def test_upgrade_waits_until_the_merchant_total_crosses_the_threshold_inside_a_chunk(conn):
    thresholds = Thresholds(upgrade_min_total=10)
    # C1: 4 transactions with the lowest weight; C2..C4: 2 each. total = 10, not > 10.
    rows = ([("C1", "M1", "1", "F")] * 4 + [("C2", "M1", "1", "F")] * 2
            + [("C3", "M1", "1", "F")] * 2 + [("C4", "M1", "1", "F")] * 2)
    rows, weights = weighted(rows, {"C1": "1", "C2": "5", "C3": "6", "C4": "7"})
    assert apply(conn, chunk_from_rows("c1", rows, weights), thresholds) == []
    # One more transaction of a new customer at M1 crosses 10 within this chunk.
    fired = apply(conn, chunk_from_rows("c2", [("C5", "M1", "1", "F")]), thresholds)
    assert keys(fired) == [("PatId1", "M1", "C1")]
    d = fired[0]
    # counts [1,2,2,2,4]: p90 = 2 + 0.6*(4-2) = 3.2; weights [1,5,6,7]: p10 = 1 + 0.3*4 = 2.2
    assert (d.txn_count, d.avg_weight, d.merchant_total) == (4, 1.0, 11)
    assert d.p90_count == pytest.approx(3.2) and d.p10_weight == pytest.approx(2.2)
    assert d.chunk_key == "c2" and d.apply_order == 2


def test_upgrade_with_ties_fires_for_every_tied_customer_and_never_without_a_weight(conn):
    thresholds = Thresholds(upgrade_min_total=5, upgrade_count_percentile=0.5,
                            upgrade_weight_percentile=0.5)
    # Every customer has 2 transactions: p50 count = 2, all satisfy the count rule.
    # Weights 3, 3, 9 (C4 has none): p50 weight = 3; C1 and C2 tie at the percentile.
    rows = [(c, "M1", "1", "F") for c in ("C1", "C2", "C3", "C4") for _ in range(2)]
    rows, weights = weighted(rows, {"C1": "3", "C2": "3", "C3": "9"})
    fired = apply(conn, chunk_from_rows("c1", rows, weights), thresholds)
    assert keys(fired) == [("PatId1", "M1", "C1"), ("PatId1", "M1", "C2")]
    assert [d.seq for d in fired] == [1, 2]
    assert {d.p10_weight for d in fired} == {3.0}


def test_upgrade_fires_for_an_untouched_customer_when_others_move_the_percentiles(conn):
    thresholds = Thresholds(upgrade_min_total=5)
    rows = [("C1", "M1", "1", "F")] * 3 + [("C2", "M1", "1", "F")] * 3
    rows, weights = weighted(rows, {"C1": "2", "C2": "1"})
    # counts [3,3]: p90 = 3; weights [1,2]: p10 = 1.1, so only C2
    fired = apply(conn, chunk_from_rows("c1", rows, weights), thresholds)
    assert keys(fired) == [("PatId1", "M1", "C2")]
    newcomers = [(f"N{i:02d}", "M1", "1", "F") for i in range(10)]
    newcomers, weights = weighted(newcomers, {f"N{i:02d}": "5" for i in range(10)})
    # counts [1 x10, 3, 3]: p90 = 1 + 0.9*2 = 2.8; weights [1, 2, 5 x10]: p10 = 2 + 0.1*3 = 2.3
    fired = apply(conn, chunk_from_rows("c2", newcomers, weights), thresholds)
    assert keys(fired) == [("PatId1", "M1", "C1")]
    assert fired[0].p90_count == pytest.approx(2.8)
    assert fired[0].p10_weight == pytest.approx(2.3)


def test_detections_carry_gap_free_seq_and_deterministic_order(conn):
    rows = [(c, m, "1", "F") for m in ("M2", "M1") for c in ("C2", "C1", "Cb", "Ca")
            for _ in range(3)]
    fired = apply(conn, chunk_from_rows("c1", rows))
    assert keys(fired) == sorted(keys(fired))
    assert [d.seq for d in fired] == list(range(1, len(fired) + 1))
    more = apply(conn, chunk_from_rows("c2", [("C9", "M1", "1", "F")] * 3))
    assert [d.seq for d in more] == [len(fired) + 1]
    assert all(d.y_start_time == Y_START and d.detected_at.tzinfo for d in fired + more)


def test_invalid_aggregates_are_refused_before_touching_the_database(conn):
    chunk = chunk_from_rows("c1", [("C1", "M1", "1", "F")])
    with pytest.raises(InvalidAggregates):
        apply_chunk(conn, ChunkRef("other"), chunk, y_start_time=Y_START)
    doubled = ChunkAggregates("c1", 2, 0, chunk.pairs * 2)
    with pytest.raises(InvalidAggregates):
        apply_chunk(conn, ChunkRef("c1"), doubled, y_start_time=Y_START)
    with pytest.raises(InvalidAggregates):  # prepared ahead (the worker's Spark thread)
        prepare_pairs(doubled)
    assert chunk_status(conn, "c1") is None


def test_pairs_prepared_ahead_apply_as_the_same_pairs_prepared_in_the_transaction(conn):
    rows = [("C1", "M1", "1", "F"), ("C\t2", "M1", "1", "M"), ("C1", "M2", "1", "F")]
    first, second = chunk_from_rows("c1", rows), chunk_from_rows("c2", rows)

    # the worker holds a prepared chunk's counts and COPY text only, not its pairs
    assert try_apply_chunk(conn, ChunkRef("c1"), first.without_pairs(), y_start_time=Y_START,
                           prepared=prepare_pairs(first)) == []
    assert try_apply_chunk(conn, ChunkRef("c2"), second, y_start_time=Y_START) == []
    with conn.cursor() as cur:
        cur.execute("SELECT merchant, customer, txn_count FROM pair_state ORDER BY 1, 2")
        # bytewise order: a tab sorts before "1"
        assert cur.fetchall() == [("M1", "C\t2", 2), ("M1", "C1", 2), ("M2", "C1", 2)]
        cur.execute("SELECT chunk_key, pairs FROM processed_chunks ORDER BY apply_order")
        assert cur.fetchall() == [("c1", 3), ("c2", 3)]
    conn.rollback()


def test_pairs_prepared_for_another_chunk_or_dropped_are_refused(conn):
    rows = [("C1", "M1", "1", "F"), ("C1", "M2", "1", "F")]
    first, second = chunk_from_rows("c1", rows), chunk_from_rows("c2", rows)
    with pytest.raises(InvalidAggregates, match="prepared for another chunk"):
        try_apply_chunk(conn, ChunkRef("c2"), second, y_start_time=Y_START,
                        prepared=prepare_pairs(first))
    # pairs dropped and nothing prepared: refused, never applied as an empty chunk
    with pytest.raises(InvalidAggregates, match="its pairs hold 0 transactions, rows_good is 2"):
        try_apply_chunk(conn, ChunkRef("c1"), first.without_pairs(), y_start_time=Y_START)
    assert chunk_status(conn, "c1") is None and chunk_status(conn, "c2") is None


def sequence_of_chunks(n: int) -> list[ChunkAggregates]:
    """Deterministic chunks over 3 merchants that make all three rules fire at various points."""
    chunks = []
    for i in range(n):
        rows = []
        for j in range(12):
            c, m = (i * 5 + j * 3) % 9, (i + j) % 3
            customer, merchant = f"C{c}", f"M{m}"
            amount = Decimal((i * 7 + j * 13) % 40) + Decimal("0.25")
            gender = "FMMEUM"[(c * 2 + m + i % 2) % 6]  # a customer's gender varies by row
            rows.append((customer, merchant, amount, gender, f"cat{j % 2}"))
        weights = {(f"C{c}", f"M{m}", f"cat{k}"): Decimal(c * 3 + m + k)
                   for c in range(9) for m in range(3) for k in range(2) if (c + k) % 3}
        chunks.append(chunk_from_rows(f"chunk-{i:03d}", rows, weights))
    return chunks


def engine_output(conn) -> list[tuple]:
    return query(conn, "SELECT seq, pattern_id, merchant_id, customer_name, chunk_key, apply_order,"
                 " txn_count, amount_sum, avg_weight, p90_count, p10_weight, female, male,"
                 " merchant_total, file_no FROM detected_patterns ORDER BY seq")


def state(conn) -> tuple[list[tuple], list[tuple]]:
    pairs = query(conn, "SELECT merchant, customer, txn_count, amount_sum, weight_sum,"
                  " weighted_count, gender FROM pair_state ORDER BY 1, 2")
    merchants = query(conn, "SELECT merchant, total, customers, female, male"
                      " FROM merchant_state ORDER BY 1")
    return pairs, merchants


def test_micro_batches_of_1_and_7_give_identical_output(migrated_database_url, postgres_server_url):
    chunks = sequence_of_chunks(20)
    outputs = []
    for batch_size in (1, 7):
        connection = db.connect(migrated_database_url)
        try:
            with connection.cursor() as cur:
                cur.execute("TRUNCATE processed_chunks, rejected_chunks, pair_state,"
                            " merchant_state, pair_count_histogram, merchant_rule_state,"
                            " weight_order, waiting_pairs, detected_patterns, outbox_files")
            connection.commit()
            for start in range(0, len(chunks), batch_size):
                # a micro-batch applies its chunks in ascending key order; redeliveries included
                batch = chunks[start:start + batch_size] + chunks[max(0, start - 2):start]
                for aggregates in sorted(batch, key=lambda a: a.chunk_key):
                    apply(connection, aggregates)
            outputs.append((engine_output(connection), state(connection)))
        finally:
            connection.close()
    assert outputs[0] == outputs[1]
    assert len(outputs[0][0]) > 5


def test_engine_matches_the_reference_model_on_a_fixed_sequence(conn):
    model = ReferenceEngine(SMALL)
    for aggregates in sequence_of_chunks(25):
        fired = apply(conn, aggregates)
        assert keys(fired) == model.apply(aggregates.chunk_key, aggregates)
    got = engine_output(conn)
    expected = [(d.seq, d.pattern_id, d.merchant_id, d.customer_name, d.chunk_key, d.apply_order,
                 d.txn_count, d.amount_sum, d.avg_weight, d.p90_count, d.p10_weight, d.female,
                 d.male, d.merchant_total) for d in model.detections]
    assert [row[:-1] for row in got] == expected
    assert {row[1] for row in expected} == {"PatId1", "PatId2", "PatId3"}


def test_two_threads_applying_different_chunks_equal_a_sequential_order(
    migrated_database_url,
):
    chunks = sequence_of_chunks(24)
    halves = [chunks[0::2], chunks[1::2]]
    errors: list[BaseException] = []

    def worker(mine: list[ChunkAggregates]) -> None:
        connection = db.connect(migrated_database_url)
        try:
            for aggregates in mine:
                apply(connection, aggregates)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(half,)) for half in halves]
    # both threads in apply_chunk at once, each waiting for the engine lock
    with held_until_contended(migrated_database_url, db.ENGINE_LOCK, waiters=2):
        for thread in threads:
            thread.start()
    for thread in threads:
        thread.join()
    assert errors == []

    connection = db.connect(migrated_database_url)
    try:
        order = [k for (k,) in query(connection,
                                     "SELECT chunk_key FROM processed_chunks ORDER BY apply_order")]
        assert sorted(order) == sorted(a.chunk_key for a in chunks)
        by_key = {a.chunk_key: a for a in chunks}
        model = ReferenceEngine(SMALL)
        for key in order:
            model.apply(key, by_key[key])
        got = [(s, p, m, c, k) for s, p, m, c, k, *_ in engine_output(connection)]
        assert got == [(d.seq, *d.key, d.chunk_key) for d in model.detections]
        pairs, merchants = state(connection)
        assert pairs == [(m, c, s.txn_count, s.amount_sum, s.weight_sum, s.weighted_count,
                          s.gender) for (m, c), s in sorted(model.pairs.items())]
        assert merchants == [(m, s.total, s.customers, s.female, s.male)
                             for m, s in sorted(model.merchants.items())]
    finally:
        connection.close()


def test_names_with_separators_and_backslashes_are_stored_verbatim(conn):
    odd = ["C\t1", "C\\N", "C\n2", 'C"3,', "Cé\r"]
    apply(conn, chunk_from_rows("c1", [(c, "M\\1", "1", "F") for c in odd]))
    assert query(conn, "SELECT merchant, customer FROM pair_state ORDER BY customer COLLATE \"C\""
                 ) == [("M\\1", c) for c in sorted(odd)]


def test_a_chunk_without_good_rows_is_recorded_as_applied(conn):
    empty = ChunkAggregates("c1", rows_good=0, rows_rejected=7, pairs=())
    assert apply_chunk(conn, ChunkRef("c1", etag="abc", event_time=Y_START), empty,
                       y_start_time=Y_START, spark_ms=12) == []
    assert query(conn, "SELECT apply_order, etag, rows_good, rows_rejected, pairs, event_time,"
                 " spark_ms, apply_ms IS NOT NULL FROM processed_chunks"
                 ) == [(1, "abc", 0, 7, 0, Y_START, 12, True)]


def test_a_failure_inside_apply_leaves_no_trace_and_the_connection_usable(conn):
    # PostgreSQL text cannot hold NUL: the COPY fails after the chunk was claimed.
    broken = chunk_from_rows("c1", [("C\x001", "M1", "1", "F")])
    with pytest.raises(psycopg2.Error):
        apply(conn, broken)
    assert chunk_status(conn, "c1") is None
    assert len(apply(conn, chunk_from_rows("c1", [("C1", "M1", "1", "F")] * 3))) == 1


def test_detection_latency_is_measured_from_the_s3_event(conn):
    aggregates = chunk_from_rows("c1", [("C1", "M1", "1", "F")] * 3)
    event_time = datetime(2026, 11, 27, 0, 0, tzinfo=UTC)
    (fired,) = apply_chunk(conn, ChunkRef("c1", event_time=event_time), aggregates,
                           y_start_time=Y_START, thresholds=SMALL)
    ((latency_ms,),) = query(conn, "SELECT latency_ms FROM detection_latency")
    assert float(latency_ms) == pytest.approx(
        (fired.detected_at - event_time).total_seconds() * 1000
    )


# --- the worker's database calls: a refused statement is the work's failure, not an outage ---

def long_customer() -> str:
    """3,000 characters PostgreSQL cannot compress: over the ~2,700 bytes a btree index row
    may hold, so pair_state's key refuses it (SQLSTATE 54000, an ``OperationalError``)."""
    return secrets.token_hex(1500)


def worker_on(database_url: str, connections: list[object]) -> Worker:
    def connect():
        connections.append(db.connect(database_url))
        return connections[-1]

    settings = WorkerSettings(bucket="b", queue_url="q", database_url=database_url,
                              db_retry_attempts=4)
    return Worker(settings, s3=None, sqs=None, connect=connect, aggregate=lambda _: None)


def test_a_statement_the_database_refuses_fails_at_once_and_is_no_outage(migrated_database_url):
    connections: list[object] = []
    worker = worker_on(migrated_database_url, connections)
    attempts = []

    def apply_long_key(conn):
        attempts.append(conn)
        return apply(conn, chunk_from_rows("c1", [(long_customer(), "M1", "1", "F")]))

    try:
        with pytest.raises(psycopg2.errors.ProgramLimitExceeded) as refused:
            worker.db.run(apply_long_key)
        assert isinstance(refused.value, psycopg2.OperationalError)  # what misled the worker
        assert not db.is_outage(refused.value) and not db.is_transient(refused.value)
        # one attempt, on the one connection: no retry, no reconnect, no DatabaseUnavailable
        assert len(attempts) == 1 and len(connections) == 1
        # the connection goes on serving the next chunk
        assert keys(worker.db.run(lambda conn: apply(conn, chunk_from_rows(
            "c2", [("C1", "M1", "1", "F")] * 3)))) == [("PatId2", "M1", "C1")]
        assert len(connections) == 1
        assert chunk_status(connections[0], "c1") is None
    finally:
        worker.close()


def test_a_lost_connection_is_an_outage_and_retried_on_a_new_one(migrated_database_url):
    connections: list[object] = []
    worker = worker_on(migrated_database_url, connections)
    errors = []

    def terminated_once(conn):
        if not errors:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                (pid,) = cur.fetchone()
            conn.rollback()
            with closing(db.connect(migrated_database_url)) as admin, admin.cursor() as cur:
                cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
            try:
                ping(conn)
            except psycopg2.Error as exc:  # 57P01 admin shutdown, or the connection lost
                errors.append(exc)
                raise
        return apply(conn, chunk_from_rows("c1", [("C1", "M1", "1", "F")] * 3))

    try:
        assert keys(worker.db.run(terminated_once)) == [("PatId2", "M1", "C1")]
        assert len(errors) == 1 and db.is_outage(errors[0])
        assert len(connections) == 2  # reconnected
    finally:
        worker.close()
