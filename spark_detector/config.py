"""The worker's settings, read once from the environment at start-up.

Every variable, its default and meaning is listed in README.md ("Worker configuration").
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

from spark_detector.engine import Thresholds, thresholds_from_env


class ConfigError(ValueError):
    """A required setting is missing or malformed; the message names the variable."""


def _get(env: Mapping[str, str], name: str, default: str | None = None) -> str:
    value = env.get(name, "").strip()
    if value:
        return value
    if default is None:
        raise ConfigError(f"environment variable {name} is required")
    return default


def _number(env: Mapping[str, str], name: str, default: str, kind: type = float):
    raw = _get(env, name, default)
    try:
        return kind(raw)
    except (ValueError, ArithmeticError) as exc:
        raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from exc


def _optional_seconds(env: Mapping[str, str], name: str) -> float | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds") from exc


def _thresholds(env: Mapping[str, str]) -> Thresholds:
    try:
        return thresholds_from_env(env)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def database_url_from_env(env: Mapping[str, str]) -> str:
    """DATABASE_URL, or a URL built from DB_SECRET (the JSON of an RDS Secrets Manager secret).

    ECS injects the secret's JSON into DB_SECRET; building the URL here keeps the password
    out of the task definition.
    """
    url = env.get("DATABASE_URL", "").strip()
    if url:
        return url
    secret = env.get("DB_SECRET", "").strip()
    if not secret:
        raise ConfigError("environment variable DATABASE_URL (or DB_SECRET) is required")
    try:
        data = json.loads(secret)
        user, password, host = data["username"], data["password"], data["host"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(
            "DB_SECRET must be a JSON object with username, password, host "
            "(optional port, dbname)"
        ) from exc
    port = data.get("port", 5432)
    dbname = data.get("dbname", "postgres")
    return f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{dbname}"


@dataclass(frozen=True)
class WorkerSettings:
    bucket: str
    queue_url: str
    database_url: str = field(repr=False)  # may hold a password
    chunk_prefix: str = "stream_chunks/"
    chunk_suffix: str = ".csv"
    reference_key: str = "reference/CustomerImportance.csv"
    detections_prefix: str = "detected_patterns/"
    quarantine_prefix: str = "quarantine/"
    spark_master: str | None = None  # None: spark-submit's / spark-defaults' master
    # A backlog drains ~12% faster in batches of 30 than of 10 (make bench: each Spark job
    # has ~0.5 s of fixed cost); at the nominal rate a batch holds one chunk either way.
    max_batch_chunks: int = 30
    batch_window_seconds: float = 0.5
    wait_time_seconds: int = 20
    visibility_timeout_seconds: int = 300
    heartbeat_after_seconds: float = 60.0
    retry_delay_seconds: int = 30
    flush_partial_after_seconds: float | None = None
    backfill_every_seconds: float | None = None
    dlq_url: str | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        env = os.environ if env is None else env
        return cls(
            bucket=_get(env, "BUCKET"),
            queue_url=_get(env, "QUEUE_URL"),
            database_url=database_url_from_env(env),
            chunk_prefix=_get(env, "CHUNK_PREFIX", "stream_chunks/"),
            chunk_suffix=_get(env, "CHUNK_SUFFIX", ".csv"),
            reference_key=_get(env, "REFERENCE_KEY", "reference/CustomerImportance.csv"),
            detections_prefix=_get(env, "DETECTIONS_PREFIX", "detected_patterns/"),
            quarantine_prefix=_get(env, "QUARANTINE_PREFIX", "quarantine/"),
            spark_master=env.get("SPARK_MASTER", "").strip() or None,
            max_batch_chunks=_number(env, "WORKER_MAX_BATCH_CHUNKS", "30", int),
            batch_window_seconds=_number(env, "WORKER_BATCH_WINDOW_SECONDS", "0.5"),
            wait_time_seconds=_number(env, "WORKER_WAIT_TIME_SECONDS", "20", int),
            visibility_timeout_seconds=_number(env, "WORKER_VISIBILITY_TIMEOUT_SECONDS", "300",
                                               int),
            heartbeat_after_seconds=_number(env, "WORKER_HEARTBEAT_AFTER_SECONDS", "60"),
            retry_delay_seconds=_number(env, "WORKER_RETRY_DELAY_SECONDS", "30",
                                               int),
            flush_partial_after_seconds=_optional_seconds(env, "WORKER_FLUSH_PARTIAL_AFTER"),
            backfill_every_seconds=_optional_seconds(env, "WORKER_BACKFILL_EVERY"),
            dlq_url=env.get("DLQ_URL", "").strip() or None,
            thresholds=_thresholds(env),
        )
