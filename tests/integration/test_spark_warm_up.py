"""The worker's start-up warm-up runs the real batch query on made-up chunks, without S3."""

from __future__ import annotations

import pytest

from spark_detector.spark.fetch import warm_up_body
from spark_detector.spark.job import FetchSpec, warm_up
from tests.reference_model import aggregate_rows, pairs_from_copy_text, read_chunk

pytestmark = pytest.mark.spark

HEADER = "step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud"


@pytest.mark.parametrize("on_driver", [True, False], ids=["driver", "executors"])
def test_warm_up_aggregates_its_made_up_chunks_like_the_reference_without_calling_s3(
        spark, on_driver):
    # Given an endpoint nothing listens on: any S3 call would fail the Spark job
    spec = FetchSpec("no-such-bucket", endpoint_url="http://127.0.0.1:9", max_attempts=1,
                     on_driver=on_driver)

    result = warm_up(spark, spec, rounds=1, lines=300)

    # Then every made-up chunk went through parsing and the aggregate, and came out as the
    # pure-Python reference aggregates the same lines (without weights: warm-up has none)
    assert result.aggregates and not result.missing_chunks and not result.rejected_chunks
    chunk = f"{HEADER}\n{warm_up_body(300)}\n".encode()
    read = read_chunk(chunk)
    assert not read.rejected and len(read.rows) == 300
    for key, aggregates in result.aggregates.items():
        expected = aggregate_rows(key, read.rows, {})
        assert aggregates == expected.without_pairs()
        assert pairs_from_copy_text(result.prepared[key].copy_text) == expected.pairs
