import json
from decimal import Decimal

import pytest

from spark_detector.config import (
    ConfigError,
    WorkerSettings,
    database_url_from_env,
    fetches_on_driver,
)
from spark_detector.retry import backoff_delays, retry

BASE = {"BUCKET": "b", "QUEUE_URL": "http://q", "DATABASE_URL": "postgresql://x/y"}


def test_defaults_follow_the_spec():
    settings = WorkerSettings.from_env(BASE)
    assert settings.max_batch_chunks == 20
    assert settings.thresholds.upgrade_min_total == 50_000
    assert settings.thresholds.child_max_avg_amount == Decimal(23)
    assert settings.flush_partial_after_seconds is None
    assert "postgresql" not in repr(settings)  # the URL may carry a password


@pytest.mark.parametrize("missing", ["BUCKET", "QUEUE_URL", "DATABASE_URL"])
def test_a_missing_required_variable_is_named(missing):
    env = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(ConfigError, match=missing):
        WorkerSettings.from_env(env)


@pytest.mark.parametrize(("fetch_on", "master", "on_driver"), [
    ("auto", "local[*]", True), ("auto", "local", True), ("auto", "local[2,3]", True),
    ("auto", "spark://10.0.0.1:7077", False), ("auto", "yarn", False),
    ("auto", "k8s://https://api:6443", False), ("auto", "local-cluster[2,1,1024]", False),
    ("driver", "yarn", True), ("executors", "local[2]", False),
])
def test_chunks_are_fetched_by_the_driver_only_in_local_mode_unless_told(
        fetch_on, master, on_driver):
    settings = WorkerSettings.from_env({**BASE, "WORKER_FETCH_ON": fetch_on.upper()})
    assert fetches_on_driver(settings.fetch_on, master) is on_driver


def test_an_unknown_fetch_place_is_named():
    assert WorkerSettings.from_env(BASE).fetch_on == "auto"
    with pytest.raises(ConfigError, match="WORKER_FETCH_ON='both' is not one of auto, driver"):
        WorkerSettings.from_env({**BASE, "WORKER_FETCH_ON": "both"})


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
        "postgresql://app:p%40ss%2Fw%3Ard@db.local:5433/patterns"
        "?sslmode=verify-full&sslrootcert=/opt/rds/global-bundle.pem")
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


def test_a_secret_url_verifies_the_server_and_a_database_url_keeps_its_own_sslmode():
    secret = json.dumps({"username": "u", "password": "p", "host": "h"})
    url = database_url_from_env({"DB_SECRET": secret, "DB_SSLROOTCERT": "/etc/ca.pem"})
    assert url.endswith("?sslmode=verify-full&sslrootcert=/etc/ca.pem")
    given = "postgresql://u:p@h/db?sslmode=require"
    assert database_url_from_env({"DATABASE_URL": given, "DB_SECRET": secret}) == given


@pytest.mark.parametrize(("name", "value", "allowed"), [
    ("PATID1_COUNT_PERCENTILE", "90", "(0, 1)"),
    ("PATID1_COUNT_PERCENTILE", "1", "(0, 1)"),
    ("PATID1_WEIGHT_PERCENTILE", "0", "(0, 1)"),
    ("PATID1_MIN_TOTAL", "-1", "[0, inf)"),
    ("PATID2_MIN_COUNT", "0", "[1, inf)"),
    ("PATID2_MAX_AVG_AMOUNT", "0", "(0, inf)"),
    ("PATID2_MAX_AVG_AMOUNT", "Infinity", "(0, inf)"),
    ("PATID3_MIN_FEMALE", "-5", "[0, inf)"),
    ("WORKER_MAX_BATCH_CHUNKS", "0", "[1, 1000]"),
    ("WORKER_MAX_BATCH_CHUNKS", "5000", "[1, 1000]"),
    ("WORKER_WAIT_TIME_SECONDS", "21", "[0, 20]"),
    ("WORKER_BATCH_WINDOW_SECONDS", "-1", "[0, 60]"),
    ("WORKER_VISIBILITY_TIMEOUT_SECONDS", "50000", "[2, 43200]"),
    ("WORKER_HEARTBEAT_AFTER_SECONDS", "0", "(0, inf)"),
    ("WORKER_RETRY_DELAY_SECONDS", "-3", "[0, 43200]"),
    ("WORKER_MAX_CHUNK_FAILURES", "0", "[1, 100]"),
    ("WORKER_MAX_CHUNK_BYTES", "0", "[1, inf)"),
    ("WORKER_MAX_CHUNK_ROWS", "0", "[1, inf)"),
    ("WORKER_SPARK_JOB_TIMEOUT_SECONDS", "1", "[5, 86400]"),
    ("WORKER_SPARK_JOB_TIMEOUT_SECONDS", "100000", "[5, 86400]"),
    ("WORKER_MAX_REFERENCE_BYTES", "-1", "[1, inf)"),
    ("WORKER_DB_RETRY_ATTEMPTS", "0", "[1, 100]"),
    ("WORKER_GAP_ALERT_SECONDS", "0", "(0, inf)"),
    ("WORKER_MAX_HELD_CHUNKS", "0", "[1, 100000]"),
    ("WORKER_FLUSH_PARTIAL_AFTER", "-2", "(0, inf)"),
    ("WORKER_BACKFILL_EVERY", "0", "(0, inf)"),
])
def test_a_setting_out_of_range_is_named_with_its_allowed_range(name, value, allowed):
    with pytest.raises(ConfigError) as raised:
        WorkerSettings.from_env({**BASE, name: value})
    message = str(raised.value)
    assert message.startswith(f"{name}=") and allowed in message and "\n" not in message


def test_a_heartbeat_must_beat_before_the_visibility_timeout_runs_out():
    with pytest.raises(ConfigError, match=r"WORKER_HEARTBEAT_AFTER_SECONDS=60\.0 .*below"):
        WorkerSettings.from_env({**BASE, "WORKER_HEARTBEAT_AFTER_SECONDS": "60"})
    assert WorkerSettings.from_env({**BASE, "WORKER_HEARTBEAT_AFTER_SECONDS": "59"})


@pytest.mark.parametrize("name", ["DETECTIONS_PREFIX", "QUARANTINE_PREFIX"])
def test_the_workers_own_prefixes_must_not_overlap_the_chunk_prefix(name):
    with pytest.raises(ConfigError, match=f"{name}=.*overlaps CHUNK_PREFIX"):
        WorkerSettings.from_env({**BASE, name: "stream_chunks/out/"})


def test_the_worker_exits_2_with_one_line_naming_a_bad_setting():
    import os
    import subprocess
    import sys

    env = {**os.environ, **BASE, "PATID1_COUNT_PERCENTILE": "90"}
    done = subprocess.run([sys.executable, "-m", "spark_detector", "run"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "spark_detector: PATID1_COUNT_PERCENTILE=0.9... is out of range: allowed (0, 1)"
        .replace("0.9...", "90.0")]
