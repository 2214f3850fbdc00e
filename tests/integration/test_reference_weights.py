"""The key weights: computed from CustomerImportance once per object version, then read back
from PostgreSQL at every start, exactly; the cache never stops a worker from starting."""

from __future__ import annotations

import threading
from decimal import Decimal

import psycopg2
import pytest

from spark_detector import db
from spark_detector.chunk_aggregates import key_weights
from spark_detector.config import WorkerSettings
from spark_detector.parsing import parse_customer_importance
from spark_detector.spark.reference_weights import (
    KEEP_SETS,
    cached_weights,
    compute_weights,
    load_key_weights,
    store_weights,
)

IMPORTANCE = (
    b"Source,Target,Weight,typeTrans,fraud\n"
    b"'C1','M1',1,'es_food',0\n"
    b"'C1','M1',2,'es_food',0\n"
    b"'C1','M1',2,'es_food',0\n"
    b"'C1','M1',4.55,'es_travel',0\n"
    b"'C2','M1',1.0000005,'es_food',0\n"
    b"'C2','M1',0.0000004,'es_food',0\n"
    b"'C3','M2',999999999999.999999,'es_food',0\n"
    b"'C\"4','M 2','',0.5,0\n"  # wrong column order on purpose: a rejected row
    b"'C\"4','M \\2',0.5,'',0\n"  # a quote, a space, a backslash, an empty category
    b"'C5','M3',not-a-number,'es_food',0\n"
)


def test_compute_weights_are_the_contract_means_and_count_the_rejected_rows():
    weights, rejected = compute_weights(IMPORTANCE, "CustomerImportance.csv")

    assert weights == key_weights(parse_customer_importance(IMPORTANCE).rows)
    assert weights[("C1", "M1", "es_food")] == Decimal("1.6666666667")
    assert weights[("C2", "M1", "es_food")] == Decimal("0.5000005000")
    assert weights[('C"4', "M \\2", "")] == Decimal("0.5000000000")
    assert len(weights) == 5 and rejected == 2


def test_stored_weights_read_back_exactly(migrated_database_url):
    weights, rejected = compute_weights(IMPORTANCE, "CustomerImportance.csv")
    conn = db.connect(migrated_database_url)
    try:
        assert cached_weights(conn, "etag-1") is None
        assert store_weights(conn, "etag-1", "s3://b/k", weights, rejected)
        assert not store_weights(conn, "etag-1", "s3://b/k", weights, rejected)  # stored once

        back = cached_weights(conn, "etag-1")

        assert back == weights
        assert {str(v) for v in back.values()} == {str(v) for v in weights.values()}
    finally:
        conn.close()


@pytest.fixture
def settings(resources, migrated_database_url) -> WorkerSettings:
    return WorkerSettings(bucket=resources.bucket, queue_url=resources.queue_url,
                          database_url=migrated_database_url)


def test_the_first_start_computes_and_stores_later_starts_read_the_cache(
        resources, settings, caplog):
    s3 = resources.s3
    s3.put_object(Bucket=settings.bucket, Key=settings.reference_key, Body=IMPORTANCE)

    def load():
        return load_key_weights(s3, lambda: db.connect(settings.database_url), settings,
                                threading.Event())

    first, second = load(), load()

    assert not first.cached and first.rows_rejected == 2
    assert second.cached and second.weights == first.weights and second.etag == first.etag
    # A new version of the object is a new set, computed from its bytes
    s3.put_object(Bucket=settings.bucket, Key=settings.reference_key,
                  Body=IMPORTANCE + b"'C9','M9',7,'es_food',0\n")
    third = load()
    assert not third.cached and third.etag != first.etag
    assert third.weights[("C9", "M9", "es_food")] == Decimal(7)
    # Only the latest KEEP_SETS versions are kept
    for n in range(KEEP_SETS):
        s3.put_object(Bucket=settings.bucket, Key=settings.reference_key,
                      Body=IMPORTANCE + f"'C9','M9',{n},'es_food',0\n".encode())
        load()
    with psycopg2.connect(settings.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), count(*) FILTER (WHERE etag = %s)"
                    " FROM reference_weight_sets", (first.etag,))
        assert cur.fetchone() == (KEEP_SETS, 0)
        cur.execute("SELECT count(DISTINCT etag) FROM reference_weights")
        assert cur.fetchone() == (KEEP_SETS,)


def test_an_unreachable_database_only_costs_the_cache(resources, settings):
    s3 = resources.s3
    s3.put_object(Bucket=settings.bucket, Key=settings.reference_key, Body=IMPORTANCE)

    def refuse():
        return db.connect("postgresql://nobody@127.0.0.1:9/none?connect_timeout=1")

    loaded = load_key_weights(s3, refuse, settings, threading.Event())

    assert not loaded.cached
    assert loaded.weights == compute_weights(IMPORTANCE, "x")[0]
