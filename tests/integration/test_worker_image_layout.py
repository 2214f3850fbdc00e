"""The worker image without Docker: its files, its pinned dependencies, its CMD, run for real.

It runs in ``make test`` without root or buildah (tests/image/ builds and runs the real
image, ``make image-test``). It builds the image's equivalent: a folder holding
exactly what ``infra/worker.Dockerfile`` COPYs, where it copies it, and a venv made from the
copied requirements file alone. The Dockerfile's ENV and CMD then run from its WORKDIR
against moto and PostgreSQL. A file the image forgets, or a dependency that is missing from
the pins, fails here. (The image's Python is 3.11, like this machine's.)
"""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from infra.local.spark_cluster import create_venv
from infra.local.stack import poll_until
from tests.support.images import instructions
from tests.support.workers import (
    REPO,
    applied_count,
    assert_applied_in_production_order,
    queued_stream,
    worker_env,
)

pytestmark = [pytest.mark.spark, pytest.mark.timeout(600)]


def image_root(folder: Path) -> Path:
    """``folder`` laid out as the image's file system: only what the Dockerfile COPYs."""
    for op, args in instructions():
        if op != "COPY":
            continue
        *sources, destination = shlex.split(args)
        for source in sources:
            target = folder / destination.lstrip("/")
            if destination.endswith("/"):  # into that folder, as Docker does
                target = target / Path(source).name
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, target,
                                ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / source, target)
    return folder


def image_env(root: Path) -> dict[str, str]:
    """The Dockerfile's ENV, its absolute paths moved under ``root``."""
    env: dict[str, str] = {}
    for op, args in instructions():
        if op == "ENV":
            for assignment in shlex.split(args):
                name, value = assignment.split("=", 1)
                env[name] = str(root) + value if value.startswith("/") else value
    return env




def test_the_image_layout_runs_the_worker_from_its_own_files_and_pins(
        moto_endpoint, migrated_database_url, tmp_path):
    root = image_root(tmp_path / "image")
    [workdir] = [args for op, args in instructions() if op == "WORKDIR"]
    [cmd] = [json.loads(args) for op, args in instructions() if op == "CMD"]
    # the image installs the lock file it copied, so the venv does too
    [destination] = [shlex.split(args)[-1] for op, args in instructions()
                     if op == "COPY" and "requirements/worker.txt" in shlex.split(args)]
    venv_python = create_venv(tmp_path / "venv",
                              root / destination.lstrip("/") / "worker.txt")
    assert not (root / "app" / "tests").exists()
    assert not (root / "app" / "producer").exists()  # the contract is chunk_contract

    chunks, importance, resources = queued_stream(tmp_path / "data", moto_endpoint)

    env = {name: value for name, value in worker_env(resources, migrated_database_url).items()
           if name not in ("PYTHONPATH", "VIRTUAL_ENV", "PYSPARK_PYTHON", "SPARK_MASTER")}
    env.update(image_env(root))
    env["PATH"] = f"{venv_python.parent}:/usr/bin:/bin"  # `python` is the image's
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(cmd, cwd=root / workdir.lstrip("/"), env=env,
                              stdout=log.open("ab"), stderr=subprocess.STDOUT)
    try:
        poll_until(lambda: applied_count(migrated_database_url) == len(chunks), 240,
                   "every chunk applied", process=worker, log=log, tail=3000)
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=120)
    assert code == 0, log.read_text()[-3000:]
    assert assert_applied_in_production_order(migrated_database_url, chunks, importance)
