"""``LocalServices``: moto server + resources + local Lambda runner + PostgreSQL, as one object.

    with LocalServices.start(root / ".local", database="txn_demo") as stack:
        subprocess.run([...], env=stack.env())   # producer / worker see the local AWS and PG

Used by ``make demo``, ``make up`` / ``make down`` (detached) and the end-to-end test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from infra.local import postgres
from infra.local.moto_server import FAKE_CREDENTIALS, MotoProcess, start_moto
from infra.local.resources import Resources, StackSpec, create_resources
from infra.local.template import spec_from_template

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class LocalServices:
    """Where everything is; ``env()`` is what a pipeline process needs to use it."""

    endpoint: str
    resources: Resources
    database_url: str
    spec: StackSpec
    work_dir: Path
    pgdata: Path | None = None  # when PostgreSQL is the embedded one
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def bucket(self) -> str:
        return self.resources.bucket

    @property
    def logs(self) -> Path:
        return self.work_dir / "logs"

    def env(self, base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
        """``base`` (default: this process's environment) pointed at the local stack."""
        env = {k: v for k, v in (os.environ if base is None else base).items()
               if not k.startswith("AWS_")}
        env.update(FAKE_CREDENTIALS)
        env.update(
            AWS_ENDPOINT_URL=self.endpoint,
            BUCKET=self.bucket,
            QUEUE_URL=self.resources.queue_url,
            DLQ_URL=self.resources.dlq_url,
            CHUNK_PREFIX=self.spec.chunk_prefix,
            CHUNK_SUFFIX=self.spec.chunk_suffix,
            DATABASE_URL=self.database_url,
        )
        env.update(extra)
        return env

    def clients(self) -> tuple[object, object]:
        """(s3, sqs) boto3 clients for this stack."""
        import boto3

        session = boto3.Session(
            aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=FAKE_CREDENTIALS["AWS_REGION"],
        )
        return (session.client("s3", endpoint_url=self.endpoint),
                session.client("sqs", endpoint_url=self.endpoint))

    def to_json(self) -> str:
        data = asdict(self)
        data["work_dir"] = str(self.work_dir)
        data["pgdata"] = None if self.pgdata is None else str(self.pgdata)
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> LocalServices:
        data = json.loads(text)
        return cls(
            endpoint=data["endpoint"], resources=Resources(**data["resources"]),
            database_url=data["database_url"], spec=StackSpec(**data["spec"]),
            work_dir=Path(data["work_dir"]),
            pgdata=None if data["pgdata"] is None else Path(data["pgdata"]),
            pids=data["pids"],
        )

    @classmethod
    @contextmanager
    def start(cls, work_dir: Path, *, database: str = "txn_pipeline",
              database_url: str | None = None, spec: StackSpec | None = None,
              handler: str = "lambda_trigger.app.handler",
              runner_env: Mapping[str, str] | None = None) -> Iterator[LocalServices]:
        """Start everything; stop everything this call started on exit.

        ``database_url``: use that database as is (a test's fresh database). Otherwise
        ``DATABASE_URL`` from the environment, or the embedded server under
        ``work_dir/pgdata``, gets ``database`` recreated empty.
        """
        handles = _Handles()
        try:
            stack = launch(work_dir, database=database, database_url=database_url,
                           spec=spec or spec_from_template(), handler=handler,
                           runner_env=runner_env, handles=handles)
            yield stack
        finally:
            handles.stop()


@dataclass
class _Handles:
    """What one ``launch`` started, for ``stop`` to undo in reverse order."""

    moto: MotoProcess | None = None
    runner: subprocess.Popen | None = None
    pgdata: Path | None = None  # an embedded server this launch started

    def stop(self) -> None:
        if self.runner is not None:
            stop_process(self.runner, timeout=15)
        if self.moto is not None:
            self.moto.stop()
        if self.pgdata is not None:
            postgres.stop_embedded(self.pgdata)


def stop_process(process: subprocess.Popen, timeout: float) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@contextmanager
def stopped_on_exit(process: subprocess.Popen, timeout: float) -> Iterator[subprocess.Popen]:
    """``process``, stopped (``stop_process``) when the block ends, however it ends."""
    try:
        yield process
    finally:
        stop_process(process, timeout)


class StackStartError(RuntimeError):
    """A process of the local stack did not start."""


class WaitFailed(RuntimeError):
    """A polled condition did not hold in time, or the process it depended on exited."""


def poll_until(condition: Callable[[], object], timeout: float, what: str, *,
               process: subprocess.Popen | None = None, log: Path | None = None,
               every: float = 0.2, tail: int = 0,
               error: type[Exception] = WaitFailed) -> object:
    """The first truthy value of ``condition()``, polled every ``every`` seconds.

    Raises ``error`` naming ``what`` (and ``log``, with its last ``tail`` characters) when
    ``process`` exits first or ``timeout`` passes: the one polling loop of the local stack,
    the bench and the tests.
    """
    def failure(reason: str) -> Exception:
        where = "" if log is None else f"; see {log}"
        if tail and log is not None and log.exists():
            where += ":\n" + log.read_text(errors="replace")[-tail:]
        return error(f"{what}: {reason}{where}")

    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise failure(f"{' '.join(map(str, process.args))} exited with {process.returncode}")
        if time.monotonic() >= deadline:
            raise failure(f"not done within {timeout:.0f} s")
        time.sleep(every)


def wait_for_line(path: Path, offset: int, marker: str, process: subprocess.Popen,
                  timeout: float) -> None:
    """Poll ``path`` (from ``offset``) until a line contains ``marker``; fail if ``process``
    exits first or ``timeout`` passes."""
    def logged() -> bool:
        with path.open("rb") as log:
            log.seek(offset)
            return marker.encode() in log.read()

    poll_until(logged, timeout, f"{marker!r} in the log", process=process, log=path,
               every=0.05, error=StackStartError)


def launch(work_dir: Path, *, database: str, database_url: str | None, spec: StackSpec,
           handler: str, runner_env: Mapping[str, str] | None,
           handles: _Handles, port: int = 0) -> LocalServices:
    """Start the stack; each process goes into ``handles`` as soon as it is started, so that
    a caller can stop whatever was started, even when the launch is cut short."""
    work_dir = work_dir.resolve()
    logs = work_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    pgdata = None
    if database_url is None and os.environ.get("DATABASE_URL"):
        database_url = os.environ["DATABASE_URL"]
    elif database_url is None:
        pgdata = work_dir / "pgdata"
        if not postgres.postmaster_running(pgdata):
            # recorded before the start: a start cut short by a signal is stopped too
            handles.pgdata = pgdata
        server = postgres.start_embedded(pgdata)
        database_url = postgres.recreate_database(server.url, database)

    handles.moto = start_moto(logs / "moto.log", port=port)
    endpoint = handles.moto.endpoint
    probe = LocalServices(endpoint=endpoint, resources=Resources("", "", "", "", ""),
                       database_url=database_url, spec=spec, work_dir=work_dir)
    s3, sqs = probe.clients()
    resources = create_resources(s3, sqs, spec)
    stack = LocalServices(endpoint=endpoint, resources=resources, database_url=database_url,
                       spec=spec, work_dir=work_dir, pgdata=pgdata)

    env = stack.env(
        LAMBDA_EVENTS_QUEUE_URL=resources.events_queue_url,
        LAMBDA_ON_FAILURE_QUEUE_URL=resources.trigger_failures_queue_url,
        LAMBDA_HANDLER=handler,
        LAMBDA_MAX_ATTEMPTS=str(spec.lambda_max_retry_attempts + 1),
        LAMBDA_TIMEOUT_SECONDS=str(spec.lambda_timeout_seconds),
        # The function gets what template.yaml gives it, never the database.
        DATABASE_URL="",
        **dict(spec.lambda_environment),
        **(runner_env or {}),
    )
    runner_log = logs / "lambda.log"
    offset = runner_log.stat().st_size if runner_log.exists() else 0
    with runner_log.open("ab") as log:
        handles.runner = subprocess.Popen(
            [sys.executable, "-m", "infra.local.lambda_runner"], cwd=REPO_ROOT, env=env,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    wait_for_line(runner_log, offset, '"runner_started"', handles.runner, timeout=60)
    return LocalServices(endpoint=endpoint, resources=resources, database_url=database_url,
                      spec=spec, work_dir=work_dir, pgdata=pgdata,
                      pids={"moto": handles.moto.process.pid, "lambda_runner": handles.runner.pid})
