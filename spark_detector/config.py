"""The worker's settings, read once from the environment at start-up: each is declared once,
as a field of ``WorkerSettings`` naming its variable, default and range (``setting``), read by
the reader every component shares (``chunk_contract.settings``: unset or empty means the
default). The rules' thresholds are ``engine.rules``'. Every variable is listed, with its
meaning, in docs/configuration.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

from chunk_contract import layout
from chunk_contract.settings import (
    MissingSetting,
    SettingError,
    check_ranges,
    read_settings,
    required,
    setting,
)
from spark_detector.engine import rules
from spark_detector.engine.rules import Thresholds, thresholds_from_env

# A setting missing, malformed or out of range; the message names the variable (exit code 2).
ConfigError = SettingError


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
        raise MissingSetting("DATABASE_URL (or DB_SECRET)")
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
    bucket: str = field(metadata=required("BUCKET"))
    queue_url: str = field(metadata=required("QUEUE_URL"))
    # DATABASE_URL, or one built from DB_SECRET (database_url_from_env); may hold a password
    database_url: str = field(repr=False)
    chunk_prefix: str = setting("CHUNK_PREFIX", layout.CHUNK_PREFIX)
    chunk_suffix: str = setting("CHUNK_SUFFIX", layout.CHUNK_SUFFIX)
    reference_key: str = setting("REFERENCE_KEY", layout.REFERENCE_KEY)
    detections_prefix: str = setting("DETECTIONS_PREFIX", layout.DETECTIONS_PREFIX)
    quarantine_prefix: str = setting("QUARANTINE_PREFIX", layout.QUARANTINE_PREFIX)
    # None: spark-submit's / spark-defaults' master
    spark_master: str | None = setting("SPARK_MASTER", None)
    # With the overlap, a backlog drains at the apply's pace whatever the batch size (20 or
    # 30: 86,000-91,000 rows/s on 2 cores); a batch of 20 holds a third less on the driver and
    # in the JVM (peak 1,127 vs 1,248 MiB, docs/performance.md). At the nominal rate a batch
    # holds one chunk either way. A cluster wants a few chunks per executor core.
    max_batch_chunks: int = setting("WORKER_MAX_BATCH_CHUNKS", 20, low=1, high=1000)
    batch_window_seconds: float = setting("WORKER_BATCH_WINDOW_SECONDS", 0.5, low=0, high=60)
    wait_time_seconds: int = setting("WORKER_WAIT_TIME_SECONDS", 20, low=0, high=20)  # SQS's
    # The next micro-batch's Spark job runs while this one is applied to PostgreSQL.
    overlap_batches: bool = setting("WORKER_OVERLAP_BATCHES", True)
    # Who fetches the chunks from S3: "driver" or "executors"; "auto" is the driver when Spark
    # runs in local mode (the same machine: no Python workers needed), else the executors.
    fetch_on: str = setting("WORKER_FETCH_ON", "auto", choices=FETCH_ON_CHOICES)
    # Held messages are extended to this many seconds every heartbeat; the queue's own
    # visibility timeout should be the same, so a killed worker's chunks return in a minute.
    visibility_timeout_seconds: int = setting("WORKER_VISIBILITY_TIMEOUT_SECONDS", 60, low=2,
                                              high=43_200)
    heartbeat_after_seconds: float = setting("WORKER_HEARTBEAT_AFTER_SECONDS", 20.0, low=0,
                                             low_open=True)
    # A failing chunk waits retry_delay * 2^(failures-1) seconds before its next try, and goes
    # to the DLQ after max_chunk_failures real failures.
    retry_delay_seconds: float = setting("WORKER_RETRY_DELAY_SECONDS", 30.0, low=0, high=43_200)
    max_chunk_failures: int = setting("WORKER_MAX_CHUNK_FAILURES", 3, low=1, high=100)
    # What a chunk may hold, sized to the driver JVM's default 512 MiB: a chunk at both
    # limits whose rows are all distinct customers is applied with room to spare (measured,
    # docs/configuration.md "Chunk limits and memory"); raise them with spark.driver.memory.
    max_chunk_bytes: int = setting("WORKER_MAX_CHUNK_BYTES", DEFAULT_MAX_CHUNK_BYTES, low=1)
    max_chunk_rows: int = setting("WORKER_MAX_CHUNK_ROWS", DEFAULT_MAX_CHUNK_ROWS, low=1)
    # A Spark job (the micro-batch's, or the start-up warm-up) that runs longer is taken for
    # a dead runtime: messages given back, exit code 3.
    spark_job_timeout_seconds: float = setting("WORKER_SPARK_JOB_TIMEOUT_SECONDS", 300.0,
                                               low=5, high=86_400)
    max_reference_bytes: int = setting("WORKER_MAX_REFERENCE_BYTES", 512 * 1024 * 1024, low=1)
    # PostgreSQL calls are retried this many times (bounded backoff) before the worker
    # declares an outage: it then gives its messages back and receives nothing until the
    # database answers again, however long that takes.
    db_retry_attempts: int = setting("WORKER_DB_RETRY_ATTEMPTS", 5, low=1, high=100)
    gap_alert_seconds: float = setting("WORKER_GAP_ALERT_SECONDS", 120.0, low=0, low_open=True)
    # Chunks the worker holds at most (early ones waiting for a predecessor, mostly); with a
    # full hand it receives nothing until the stream moves on (docs/operations.md).
    max_held_chunks: int = setting("WORKER_MAX_HELD_CHUNKS", 1000, low=1, high=100_000)
    # `run --flush-partial-after S` / `--backfill-every S` set these too
    flush_partial_after_seconds: float | None = setting("WORKER_FLUSH_PARTIAL_AFTER", None,
                                                        low=0, low_open=True)
    backfill_every_seconds: float | None = setting("WORKER_BACKFILL_EVERY", None, low=0,
                                                   low_open=True)
    dlq_url: str | None = setting("DLQ_URL", None)  # None: the queue's redrive policy names it
    # CloudWatch namespace of the metrics in the worker's log lines (spark_detector/worker/emf.py)
    metrics_namespace: str = setting("WORKER_METRICS_NAMESPACE", "TxnPipeline/Worker")
    # PATID*: engine.rules
    thresholds: Thresholds = field(default_factory=Thresholds)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        env = os.environ if env is None else env
        settings = read_settings(cls, env, database_url=database_url_from_env(env),
                                 thresholds=thresholds_from_env(env))
        validate(settings)
        return settings


def validate(settings: WorkerSettings) -> None:
    """Every setting within its allowed range, or a ConfigError naming the variable."""
    check_ranges(settings)
    if settings.heartbeat_after_seconds >= settings.visibility_timeout_seconds:
        raise ConfigError(
            f"WORKER_HEARTBEAT_AFTER_SECONDS={settings.heartbeat_after_seconds} is out of range:"
            f" it must be below WORKER_VISIBILITY_TIMEOUT_SECONDS="
            f"{settings.visibility_timeout_seconds}, or held messages reappear between beats")
    for env_name, prefix in (("DETECTIONS_PREFIX", settings.detections_prefix),
                             ("QUARANTINE_PREFIX", settings.quarantine_prefix)):
        if prefix.startswith(settings.chunk_prefix) or settings.chunk_prefix.startswith(prefix):
            raise ConfigError(
                f"{env_name}={prefix!r} overlaps CHUNK_PREFIX={settings.chunk_prefix!r}: the"
                " worker's own objects would be taken for chunks")
    rules.validate(settings.thresholds)
