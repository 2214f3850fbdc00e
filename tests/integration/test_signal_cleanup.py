"""`python -m bench` stopped by SIGTERM or SIGINT stops everything it started - moto, the
Lambda runner, the embedded PostgreSQL, the producer and the worker with its JVM - and exits
with 128 + the signal's number (``infra.local.interrupt``). The real command, its quickest
run, on its own embedded PostgreSQL: the server the bench starts is one of its children."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from infra.local import postgres
from infra.local.stack import REPO_ROOT, poll_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """The quick bench's generated data, made by the first run, found by the second."""
    return tmp_path_factory.mktemp("bench-data")


def started_processes(bench: psutil.Process, pgdata: Path) -> dict[int, str]:
    """pid -> command line of everything the bench runs: its descendants (moto, the runner,
    producer, worker, JVM) and the embedded PostgreSQL (a daemon: not a descendant)."""
    found = {}
    for child in bench.children(recursive=True):
        try:
            found[child.pid] = " ".join(child.cmdline())
        except psutil.NoSuchProcess:
            continue
    with contextlib.suppress(OSError, IndexError, ValueError):  # not there, or half written
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        if pid > 0 and running(pid):  # negative: initdb's bootstrap backend
            found[pid] = "postgres"
    return found


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize(("signum", "wanted"), [
    # SIGTERM once the worker's JVM runs: every kind of child is up
    (signal.SIGTERM, ("infra.local.moto_server", "infra.local.lambda_runner", "postgres",
                      "spark_detector run", "java")),
    (signal.SIGINT, ("infra.local.moto_server", "infra.local.lambda_runner", "postgres")),
], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_bench_stops_what_it_started(tmp_path, data_root, signum, wanted):
    work = tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}  # embedded: its own
    with (tmp_path / "bench.log").open("wb") as log:
        bench = subprocess.Popen(
            [sys.executable, "-m", "bench", "--quick", "--no-peer", "--no-recovery",
             "--passes", "1", "--backlog-repeats", "1", "--work-dir", str(work),
             "--out", str(tmp_path / "results"), "--data-root", str(data_root)],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def all_up() -> dict[int, str]:
            found = started_processes(psutil.Process(bench.pid), work / "pgdata")
            return found if all(any(w in cmd for cmd in found.values()) for w in wanted) else {}

        started = poll_until(all_up, 300, f"the bench's {', '.join(wanted)}", process=bench,
                             log=tmp_path / "bench.log", tail=3000)
        bench.send_signal(signum)

        assert bench.wait(timeout=300) == 128 + signum, (tmp_path / "bench.log").read_text()
        # the JVM may end a moment after the worker that owned it
        poll_until(lambda: not any(running(pid) for pid in started), 60,
                   "every process the bench started to end")
        said = (tmp_path / "bench.log").read_text()
        assert f"stopped by {signal.Signals(signum).name}" in said and "Traceback" not in said
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        postgres.stop_embedded(work / "pgdata")  # only if the bench left it running
