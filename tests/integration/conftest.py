"""Fixtures of the worker's integration tests: a generated data set, its key weights,
and a fresh bucket + queue (+ DLQ) on the session's moto server."""

from __future__ import annotations

import pytest

from producer.generate import generate
from spark_detector.spark.reference_weights import compute_weights
from tests.support.workers import AwsResources


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> tuple[bytes, bytes]:
    """20,000 generated rows (seed 3) and their CustomerImportance."""
    out = tmp_path_factory.mktemp("banksim")
    generate(out, rows=20_000, seed=3)
    return (out / "transactions.csv").read_bytes(), (out / "CustomerImportance.csv").read_bytes()


@pytest.fixture(scope="session")
def weights(dataset):
    return compute_weights(dataset[1], "CustomerImportance.csv")[0]


@pytest.fixture
def resources(moto_endpoint: str) -> AwsResources:
    return AwsResources.create(moto_endpoint)
