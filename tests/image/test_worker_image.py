"""The worker image, built from infra/worker.Dockerfile and run: ``make image-test``.

The image is built with buildah (no daemon) from a stand-in base made of Debian packages
(bookworm with Debian's Python 3.11: the real base's distribution and Python), because the
real base cannot be pulled here; everything else is the real build, pins and all: the
pinned JRE from Debian, the locked wheels from PyPI (hashes checked), the CA bundle checked
against its SHA-256 (served from the loopback, since the real one cannot be fetched here),
the jar and class archive built in the image. Then the image's own CMD runs, as the image's
user, with ``buildah run`` against moto and PostgreSQL on the loopback: it streams chunks,
its detections must equal the reference model's, its log lines must carry the metrics the
template's alarms read, and SIGTERM must end it with exit code 0.

Needs root, buildah and debootstrap (``make image-test`` installs both). The stand-in base
is made once per machine (kept in buildah's store); the image's layers are reused while their
inputs are unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg2.extensions
import pytest

from infra import image
from infra.local.stack import poll_until
from tests.support.tcp_proxy import pump
from tests.support.workers import (
    applied_count,
    assert_applied_in_production_order,
    queued_stream,
    worker_env,
)

pytestmark = [pytest.mark.image, pytest.mark.timeout(3600)]

TAG = "localhost/txn-worker:image-test"
# What the container is given: the worker's settings, none of this machine's environment.
PASSED = ("AWS_", "WORKER_", "PATID", "BUCKET", "QUEUE_URL", "DATABASE_URL", "SPARK_MASTER")


@pytest.fixture(scope="module")
def rds_ca_bundle(tmp_path_factory) -> Iterator[tuple[str, str]]:
    """A CA bundle served on the loopback in place of Amazon's: its URL and SHA-256."""
    folder = tmp_path_factory.mktemp("rds-ca")
    bundle = Path("/etc/ssl/certs/ca-certificates.crt").read_bytes()
    (folder / "global-bundle.pem").write_bytes(bundle)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield (f"http://127.0.0.1:{server.server_port}/global-bundle.pem",
               hashlib.sha256(bundle).hexdigest())
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def build_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("image") / "build.log"


@pytest.fixture(scope="module")
def base() -> str:
    return image.standin_base()


def build_args(base: str, ca: tuple[str, str], **override: str) -> dict[str, str]:
    return {"BASE_IMAGE": base, "RDS_CA_URL": ca[0], "RDS_CA_SHA256": ca[1], **override}


@pytest.fixture(scope="module")
def worker_image(base, rds_ca_bundle, build_log) -> str:
    try:
        image.build(TAG, build_args(base, rds_ca_bundle), engine="buildah",
                    pip_cert=image.pip_cert_of(), log=build_log)
    except subprocess.CalledProcessError:
        pytest.fail("the image build failed:\n" + build_log.read_text()[-4000:])
    return TAG


def image_config(tag: str) -> dict:
    out = subprocess.run(["buildah", "inspect", "--type", "image", tag], capture_output=True,
                         text=True, check=True, env=image.buildah_env()).stdout
    return json.loads(out)["OCIv1"]["config"]


@pytest.fixture
def container(worker_image) -> Iterator[str]:
    name = subprocess.run(["buildah", "from", worker_image], capture_output=True, text=True,
                          check=True, env=image.buildah_env()).stdout.strip()
    try:
        yield name
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True, env=image.buildah_env(),
                       check=False)


@contextlib.contextmanager
def loopback_url(database_url: str) -> Iterator[str]:
    """``database_url`` reached over TCP on 127.0.0.1, as a container on the host network
    reaches a server; the test's embedded PostgreSQL listens on a Unix socket only, so a
    relay carries each connection to it."""
    dsn = psycopg2.extensions.parse_dsn(database_url)
    socket_path = f"{dsn['host']}/.s.PGSQL.{dsn.get('port', 5432)}"
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # closed
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(socket_path)
            for pair in ((client, upstream), (upstream, client)):
                threading.Thread(target=pump, args=pair, daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield (f"postgresql://{dsn.get('user', 'postgres')}@127.0.0.1:"
               f"{server.getsockname()[1]}/{dsn['dbname']}")
    finally:
        server.close()


def worker_process(runner: subprocess.Popen) -> psutil.Process | None:
    """The image's CMD, started by ``buildah run`` (chroot: the same process namespace)."""
    for child in psutil.Process(runner.pid).children(recursive=True):
        try:
            if child.cmdline()[1:] == ["-m", "spark_detector", "run"]:
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def run_until_applied_then_stop(command: list[str], log: Path, database_url: str,
                                chunks: int) -> int:
    """Run the container until every chunk is applied, then SIGTERM its worker: exit code."""
    runner = subprocess.Popen(command, env=image.buildah_env(), stdout=log.open("ab"),
                              stderr=subprocess.STDOUT)
    try:
        poll_until(lambda: applied_count(database_url) == chunks, 300,
                   "every chunk applied by the image's worker", process=runner, log=log,
                   tail=3000)
        worker = poll_until(lambda: worker_process(runner), 30, "the worker process")
        worker.send_signal(signal.SIGTERM)
        return runner.wait(timeout=150)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()


def batch_lines(log: Path) -> list[dict]:
    lines = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("message") == "batch done":
                lines.append(record)
    return lines


def test_the_image_runs_as_a_user_and_its_cmd_is_the_templates(worker_image):
    config = image_config(worker_image)
    assert config["User"] == "10001"
    assert config["Cmd"] == ["python", "-m", "spark_detector", "run"]


def test_the_image_cmd_streams_chunks_to_the_reference_detections_and_stops_on_sigterm(
        worker_image, container, moto_endpoint, migrated_database_url, tmp_path):
    chunks, importance, resources = queued_stream(tmp_path / "data", moto_endpoint)

    with loopback_url(migrated_database_url) as database_url:
        env = {name: value for name, value in worker_env(resources, database_url,
                                                         WORKER_METRICS_NAMESPACE="test/Worker",
                                                         ).items() if name.startswith(PASSED)}
        env.pop("SPARK_MASTER")  # the image's own default
        command = ["buildah", "run", "--hostname", "localhost"]
        for name, value in sorted(env.items()):
            command += ["--env", f"{name}={value}"]
        command += [container, "--", *image_config(worker_image)["Cmd"]]
        log = tmp_path / "worker.log"
        code = run_until_applied_then_stop(command, log, migrated_database_url, len(chunks))
    assert code == 0, log.read_text()[-3000:]

    # in production order, with the reference model's rows and detections
    detections = assert_applied_in_production_order(migrated_database_url, chunks, importance)
    assert detections  # the thresholds make all three patterns fire on these rows

    # The figures the template's alarms and dashboard read (EMF in the "batch done" lines).
    batches = batch_lines(log)
    assert sum(b["chunks"] for b in batches) == len(chunks)
    for batch in batches:
        [block] = batch["_aws"]["CloudWatchMetrics"]
        assert block["Namespace"] == "test/Worker"
        assert {"rows_good", "apply_ms", "failures"} <= {m["Name"] for m in block["Metrics"]}
    assert sum(b["rows_good"] + b["rows_rejected"] for b in batches) == 3_000


def test_a_ca_bundle_that_does_not_match_its_checksum_stops_the_build(
        base, rds_ca_bundle, worker_image, tmp_path):
    log = tmp_path / "build.log"
    with pytest.raises(subprocess.CalledProcessError):
        image.build("localhost/txn-worker:bad-ca",
                    build_args(base, rds_ca_bundle, RDS_CA_SHA256="0" * 64),
                    engine="buildah", pip_cert=image.pip_cert_of(), log=log)
    assert "global-bundle.pem: FAILED" in log.read_text()
