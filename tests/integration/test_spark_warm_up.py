"""The worker's start-up warm-up runs the real batch query on made-up chunks, without S3."""

from __future__ import annotations

from decimal import Decimal

import pytest

from spark_detector.aggregates import PairAggregate
from spark_detector.spark_job import FetchSpec, load_weights, warm_up

pytestmark = pytest.mark.spark


def test_warm_up_parses_its_made_up_chunks_as_good_rows_without_calling_s3(spark):
    # Given an endpoint nothing listens on: any S3 call would fail the Spark job
    spec = FetchSpec("no-such-bucket", endpoint_url="http://127.0.0.1:9", max_attempts=1)
    weights = load_weights(spark, [(("C0", "M0", "es_food"), Decimal("2.5"))])

    result = warm_up(spark, spec, weights, rounds=1)

    # Then every made-up chunk went through parsing, the weights join and the aggregate
    assert result.aggregates and not result.missing_chunks and not result.rejected_chunks
    for aggregates in result.aggregates.values():
        assert (aggregates.rows_good, aggregates.rows_rejected) == (1, 0)
        assert aggregates.pairs == (
            PairAggregate("M0", "C0", 1, Decimal("1.00"), Decimal("2.5"), 1, "F"),)
