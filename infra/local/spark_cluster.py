"""A real Spark standalone cluster on this machine, and an executor Python without the project.

The master and the worker are the pyspark distribution's own daemons (``spark-class``), each
a separate process on 127.0.0.1 with a small share of the machine; they are stopped by their
PIDs whatever happens. The executors' Python is a venv holding only
``infra/executor-requirements.txt``: what a real cluster's executors would have.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyspark

from infra.local.stack import poll_until

REPO = Path(__file__).resolve().parents[2]
EXECUTOR_REQUIREMENTS = REPO / "infra" / "executor-requirements.txt"
SPARK_HOME = Path(pyspark.__file__).resolve().parent


def create_venv(folder: Path, requirements: Path) -> Path:
    """A venv of this interpreter's version (executors must run the driver's minor version)
    holding exactly ``requirements``; its ``python``."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    python = folder / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-input",
                    "-r", str(requirements)], check=True, capture_output=True)
    return python


def daemon_env(**extra: str) -> dict[str, str]:
    """What a cluster node's daemons see: no project venv on PATH, its own AWS credentials."""
    env = {
        "PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"),
        "SPARK_HOME": str(SPARK_HOME), "SPARK_DAEMON_MEMORY": "256m",
        # the executors' own credentials (an instance or pod role's, on a real cluster)
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    if os.environ.get("JAVA_HOME"):
        env["JAVA_HOME"] = os.environ["JAVA_HOME"]
    env.update(extra)
    return env


@dataclass
class StandaloneCluster:
    master_url: str
    work_dir: Path  # the worker's: one folder per application, one per executor in it

    def executor_dirs(self) -> list[Path]:
        return sorted(p for app in self.work_dir.glob("app-*") for p in app.iterdir()
                      if p.is_dir())

    def executor_logs(self, tail: int = 3000) -> str:
        return "\n".join(f"--- {d}/stderr\n" + (d / "stderr").read_text(errors="replace")[-tail:]
                         for d in self.executor_dirs() if (d / "stderr").exists())


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the daemon's process group (its executors with it), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@contextlib.contextmanager
def standalone_cluster(folder: Path, *, cores: int = 2, memory: str = "1g"
                       ) -> Iterator[StandaloneCluster]:
    """A master and one worker (``cores``, ``memory``) on free loopback ports."""
    folder.mkdir(parents=True, exist_ok=True)
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    started: list[subprocess.Popen] = []
    try:
        master_log = folder / "master.log"
        master = subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.master.Master",
             "--host", "127.0.0.1", "--port", "0", "--webui-port", "0"],
            cwd=folder, env=daemon_env(), stdout=master_log.open("wb"),
            stderr=subprocess.STDOUT, start_new_session=True)
        started.append(master)
        master_url = poll_until(
            lambda: (re.search(r"Starting Spark master at (spark://\S+)", master_log.read_text())
                     or [None, None])[1],
            60, "the Spark master to start", process=master, log=master_log, tail=2000)
        work_dir = folder / "work"
        worker_log = folder / "worker.log"
        worker = subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.worker.Worker",
             "--host", "127.0.0.1", "--port", "0", "--webui-port", "0",
             "--cores", str(cores), "--memory", memory, "--work-dir", str(work_dir), master_url],
            cwd=folder, env=daemon_env(), stdout=worker_log.open("wb"),
            stderr=subprocess.STDOUT, start_new_session=True)
        started.append(worker)
        poll_until(lambda: "Successfully registered with master" in worker_log.read_text(),
                   60, "the Spark worker to register", process=worker, log=worker_log,
                   tail=2000)
        yield StandaloneCluster(master_url, work_dir)
    finally:
        for process in reversed(started):
            _stop(process)
