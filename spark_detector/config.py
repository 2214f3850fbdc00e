"""The worker's settings, read once from the environment at start-up.

Every variable, its default and meaning is listed in docs/configuration.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

from chunk_contract import layout
from spark_detector.engine.rules import RuleError, Thresholds, thresholds_from_env


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


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _get(env, name, "true" if default else "false").strip().lower()
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}={raw!r} is not a valid flag: use true or false")


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    raw = _get(env, name, default).lower()
    if raw not in allowed:
        raise ConfigError(f"{name}={raw!r} is not one of {', '.join(allowed)}")
    return raw


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
    except RuleError as exc:
        raise ConfigError(str(exc)) from exc


# Where the worker image keeps the Amazon RDS certificate bundle (infra/worker.Dockerfile).
RDS_CA_BUNDLE = "/opt/rds/global-bundle.pem"


def database_url_from_env(env: Mapping[str, str]) -> str:
    """DATABASE_URL as given, or a URL built from DB_SECRET (an RDS Secrets Manager secret).

    ECS injects the secret's JSON into DB_SECRET; building the URL here keeps the password
    out of the task definition. That URL verifies the server's certificate and host name
    (``sslmode=verify-full``) against the RDS CA bundle shipped in the image
    (``DB_SSLROOTCERT`` names another). A DATABASE_URL keeps whatever sslmode it says.
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
    rootcert = env.get("DB_SSLROOTCERT", "").strip() or RDS_CA_BUNDLE
    return (f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/"
            f"{quote(str(dbname), safe='')}?sslmode=verify-full"
            f"&sslrootcert={quote(rootcert, safe='/')}")


FETCH_ON_CHOICES = ("auto", "driver", "executors")
DEFAULT_MAX_CHUNK_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_CHUNK_ROWS = 200_000


def fetches_on_driver(fetch_on: str, master: str) -> bool:
    """``WORKER_FETCH_ON`` resolved against the session's master ("local[2]", "spark://...")."""
    if fetch_on == "auto":
        return master == "local" or master.startswith("local[")
    return fetch_on == "driver"


@dataclass(frozen=True)
class WorkerSettings:
    bucket: str
    queue_url: str
    database_url: str = field(repr=False)  # may hold a password
    chunk_prefix: str = layout.CHUNK_PREFIX
    chunk_suffix: str = layout.CHUNK_SUFFIX
    reference_key: str = layout.REFERENCE_KEY
    detections_prefix: str = layout.DETECTIONS_PREFIX
    quarantine_prefix: str = layout.QUARANTINE_PREFIX
    spark_master: str | None = None  # None: spark-submit's / spark-defaults' master
    # With the overlap, a backlog drains at the apply's pace whatever the batch size (20 or
    # 30: 86,000-91,000 rows/s on 2 cores); a batch of 20 holds a third less on the driver and
    # in the JVM (peak 1,127 vs 1,248 MiB, docs/performance.md). At the nominal rate a batch
    # holds one chunk either way. A cluster wants a few chunks per executor core.
    max_batch_chunks: int = 20
    batch_window_seconds: float = 0.5
    wait_time_seconds: int = 20
    # The next micro-batch's Spark job runs while this one is applied to PostgreSQL.
    overlap_batches: bool = True
    # Who fetches the chunks from S3: "driver" or "executors"; "auto" is the driver when Spark
    # runs in local mode (the same machine: no Python workers needed), else the executors.
    fetch_on: str = "auto"
    # Held messages are extended to this many seconds every heartbeat; the queue's own
    # visibility timeout should be the same, so a killed worker's chunks return in a minute.
    visibility_timeout_seconds: int = 60
    heartbeat_after_seconds: float = 20.0
    # A failing chunk waits retry_delay * 2^(failures-1) seconds before its next try, and goes
    # to the DLQ after max_chunk_failures real failures.
    retry_delay_seconds: float = 30.0
    max_chunk_failures: int = 3
    # What a chunk may hold, sized to the driver JVM's default 512 MiB: a chunk at both
    # limits whose rows are all distinct customers is applied with room to spare (measured,
    # docs/configuration.md "Chunk limits and memory"); raise them with spark.driver.memory.
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES
    max_chunk_rows: int = DEFAULT_MAX_CHUNK_ROWS
    # A Spark job (the micro-batch's, or the start-up warm-up) that runs longer is taken for
    # a dead runtime: messages given back, exit code 3.
    spark_job_timeout_seconds: float = 300.0
    max_reference_bytes: int = 512 * 1024 * 1024
    # PostgreSQL calls are retried this many times (bounded backoff) before the worker
    # declares an outage: it then gives its messages back and receives nothing until the
    # database answers again, however long that takes.
    db_retry_attempts: int = 5
    gap_alert_seconds: float = 120.0
    # Chunks the worker holds at most (early ones waiting for a predecessor, mostly); with a
    # full hand it receives nothing until the stream moves on (docs/operations.md).
    max_held_chunks: int = 1000
    flush_partial_after_seconds: float | None = None
    backfill_every_seconds: float | None = None
    dlq_url: str | None = None
    # CloudWatch namespace of the metrics in the worker's log lines (spark_detector/worker/emf.py)
    metrics_namespace: str = "TxnPipeline/Worker"
    thresholds: Thresholds = field(default_factory=Thresholds)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        env = os.environ if env is None else env
        settings = cls(
            bucket=_get(env, "BUCKET"),
            queue_url=_get(env, "QUEUE_URL"),
            database_url=database_url_from_env(env),
            chunk_prefix=_get(env, "CHUNK_PREFIX", layout.CHUNK_PREFIX),
            chunk_suffix=_get(env, "CHUNK_SUFFIX", layout.CHUNK_SUFFIX),
            reference_key=_get(env, "REFERENCE_KEY", layout.REFERENCE_KEY),
            detections_prefix=_get(env, "DETECTIONS_PREFIX", layout.DETECTIONS_PREFIX),
            quarantine_prefix=_get(env, "QUARANTINE_PREFIX", layout.QUARANTINE_PREFIX),
            spark_master=env.get("SPARK_MASTER", "").strip() or None,
            max_batch_chunks=_number(env, "WORKER_MAX_BATCH_CHUNKS", "20", int),
            batch_window_seconds=_number(env, "WORKER_BATCH_WINDOW_SECONDS", "0.5"),
            wait_time_seconds=_number(env, "WORKER_WAIT_TIME_SECONDS", "20", int),
            overlap_batches=_flag(env, "WORKER_OVERLAP_BATCHES", True),
            fetch_on=_choice(env, "WORKER_FETCH_ON", "auto", FETCH_ON_CHOICES),
            visibility_timeout_seconds=_number(env, "WORKER_VISIBILITY_TIMEOUT_SECONDS", "60",
                                               int),
            heartbeat_after_seconds=_number(env, "WORKER_HEARTBEAT_AFTER_SECONDS", "20"),
            retry_delay_seconds=_number(env, "WORKER_RETRY_DELAY_SECONDS", "30"),
            max_chunk_failures=_number(env, "WORKER_MAX_CHUNK_FAILURES", "3", int),
            max_chunk_bytes=_number(env, "WORKER_MAX_CHUNK_BYTES", str(DEFAULT_MAX_CHUNK_BYTES),
                                    int),
            max_chunk_rows=_number(env, "WORKER_MAX_CHUNK_ROWS", str(DEFAULT_MAX_CHUNK_ROWS), int),
            spark_job_timeout_seconds=_number(env, "WORKER_SPARK_JOB_TIMEOUT_SECONDS", "300"),
            max_reference_bytes=_number(env, "WORKER_MAX_REFERENCE_BYTES",
                                        str(512 * 1024 * 1024), int),
            db_retry_attempts=_number(env, "WORKER_DB_RETRY_ATTEMPTS", "5", int),
            gap_alert_seconds=_number(env, "WORKER_GAP_ALERT_SECONDS", "120"),
            max_held_chunks=_number(env, "WORKER_MAX_HELD_CHUNKS", "1000", int),
            flush_partial_after_seconds=_optional_seconds(env, "WORKER_FLUSH_PARTIAL_AFTER"),
            backfill_every_seconds=_optional_seconds(env, "WORKER_BACKFILL_EVERY"),
            dlq_url=env.get("DLQ_URL", "").strip() or None,
            metrics_namespace=_get(env, "WORKER_METRICS_NAMESPACE", "TxnPipeline/Worker"),
            thresholds=_thresholds(env),
        )
        validate(settings)
        return settings


def _in_range(name: str, value: float, low: float | None, high: float | None, *,
              low_open: bool = False, high_open: bool = False) -> None:
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high or value != value:  # NaN fails every comparison
        left = "(" if low_open or low is None else "["
        right = ")" if high_open or high is None else "]"
        bounds = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        raise ConfigError(f"{name}={value} is out of range: allowed {bounds}")


# (field, environment variable, low, high, low_open, high_open); None = unbounded
_LIMITS: tuple[tuple[str, str, float | None, float | None, bool, bool], ...] = (
    ("max_batch_chunks", "WORKER_MAX_BATCH_CHUNKS", 1, 1000, False, False),
    ("batch_window_seconds", "WORKER_BATCH_WINDOW_SECONDS", 0, 60, False, False),
    ("wait_time_seconds", "WORKER_WAIT_TIME_SECONDS", 0, 20, False, False),  # SQS's limits
    ("visibility_timeout_seconds", "WORKER_VISIBILITY_TIMEOUT_SECONDS", 2, 43_200, False, False),
    ("heartbeat_after_seconds", "WORKER_HEARTBEAT_AFTER_SECONDS", 0, None, True, False),
    ("retry_delay_seconds", "WORKER_RETRY_DELAY_SECONDS", 0, 43_200, False, False),
    ("max_chunk_failures", "WORKER_MAX_CHUNK_FAILURES", 1, 100, False, False),
    ("max_chunk_bytes", "WORKER_MAX_CHUNK_BYTES", 1, None, False, False),
    ("max_chunk_rows", "WORKER_MAX_CHUNK_ROWS", 1, None, False, False),
    ("spark_job_timeout_seconds", "WORKER_SPARK_JOB_TIMEOUT_SECONDS", 5, 86_400, False, False),
    ("max_reference_bytes", "WORKER_MAX_REFERENCE_BYTES", 1, None, False, False),
    ("db_retry_attempts", "WORKER_DB_RETRY_ATTEMPTS", 1, 100, False, False),
    ("gap_alert_seconds", "WORKER_GAP_ALERT_SECONDS", 0, None, True, False),
    ("max_held_chunks", "WORKER_MAX_HELD_CHUNKS", 1, 100_000, False, False),
)


def validate(settings: WorkerSettings) -> None:
    """Every setting within its allowed range, or a ConfigError naming the variable."""
    for name, env_name, low, high, low_open, high_open in _LIMITS:
        _in_range(env_name, getattr(settings, name), low, high, low_open=low_open,
                  high_open=high_open)
    if settings.heartbeat_after_seconds >= settings.visibility_timeout_seconds:
        raise ConfigError(
            f"WORKER_HEARTBEAT_AFTER_SECONDS={settings.heartbeat_after_seconds} is out of range:"
            f" it must be below WORKER_VISIBILITY_TIMEOUT_SECONDS="
            f"{settings.visibility_timeout_seconds}, or held messages reappear between beats")
    for env_name, value in (("WORKER_FLUSH_PARTIAL_AFTER", settings.flush_partial_after_seconds),
                            ("WORKER_BACKFILL_EVERY", settings.backfill_every_seconds)):
        if value is not None:
            _in_range(env_name, value, 0, None, low_open=True)
    for env_name, prefix in (("DETECTIONS_PREFIX", settings.detections_prefix),
                             ("QUARANTINE_PREFIX", settings.quarantine_prefix)):
        if prefix.startswith(settings.chunk_prefix) or settings.chunk_prefix.startswith(prefix):
            raise ConfigError(
                f"{env_name}={prefix!r} overlaps CHUNK_PREFIX={settings.chunk_prefix!r}: the"
                " worker's own objects would be taken for chunks")
