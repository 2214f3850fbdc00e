import json
from decimal import Decimal

import pytest

from spark_detector.config import ConfigError, WorkerSettings, database_url_from_env
from spark_detector.retry import backoff_delays, retry

BASE = {"BUCKET": "b", "QUEUE_URL": "http://q", "DATABASE_URL": "postgresql://x/y"}


def test_defaults_follow_the_spec():
    settings = WorkerSettings.from_env(BASE)
    assert settings.max_batch_chunks == 30
    assert settings.thresholds.upgrade_min_total == 50_000
    assert settings.thresholds.child_max_avg_amount == Decimal(23)
    assert settings.flush_partial_after_seconds is None
    assert "postgresql" not in repr(settings)  # the URL may carry a password


@pytest.mark.parametrize("missing", ["BUCKET", "QUEUE_URL", "DATABASE_URL"])
def test_a_missing_required_variable_is_named(missing):
    env = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(ConfigError, match=missing):
        WorkerSettings.from_env(env)


def test_thresholds_and_numbers_are_overridable_and_validated():
    env = {**BASE, "PATID2_MIN_COUNT": "3", "PATID1_MIN_TOTAL": "10",
           "WORKER_FLUSH_PARTIAL_AFTER": "2.5"}
    settings = WorkerSettings.from_env(env)
    assert settings.thresholds.child_min_count == 3
    assert settings.thresholds.upgrade_min_total == 10
    assert settings.flush_partial_after_seconds == 2.5
    with pytest.raises(ConfigError, match="PATID3_MIN_FEMALE"):
        WorkerSettings.from_env({**BASE, "PATID3_MIN_FEMALE": "lots"})
    with pytest.raises(ConfigError, match="WORKER_MAX_BATCH_CHUNKS"):
        WorkerSettings.from_env({**BASE, "WORKER_MAX_BATCH_CHUNKS": "many"})


def test_database_url_from_an_rds_secret_escapes_the_password():
    secret = json.dumps({"username": "app", "password": "p@ss/w:rd", "host": "db.local",
                         "port": 5433, "dbname": "patterns"})
    assert database_url_from_env({"DB_SECRET": secret}) == (
        "postgresql://app:p%40ss%2Fw%3Ard@db.local:5433/patterns")
    with pytest.raises(ConfigError, match="DB_SECRET"):
        database_url_from_env({"DB_SECRET": "{}"})


def test_retry_gives_up_after_the_bounded_attempts():
    calls, sleeps = [], []

    def flaky():
        calls.append(1)
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        retry(flaky, retry_on=(ConnectionError,), attempts=4, base=0.1, sleep=sleeps.append)
    assert len(calls) == 4 and len(sleeps) == 3
    assert all(s <= d for s, d in zip(sleeps, backoff_delays(4, 0.1), strict=True))
    assert backoff_delays(6, 1, cap=5) == [1, 2, 4, 5, 5]


def test_retry_returns_the_first_success():
    attempts = iter([ConnectionError(), ConnectionError(), "ok"])

    def sometimes():
        value = next(attempts)
        if isinstance(value, Exception):
            raise value
        return value

    assert retry(sometimes, retry_on=(ConnectionError,), sleep=lambda _: None) == "ok"
