"""The worker image's Dockerfile: what it copies and runs exists (no Docker engine here)."""

from __future__ import annotations

import ast
import json
import re
import shlex
import tomllib
from pathlib import Path

from infra.local.template import load_template

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "infra" / "worker.Dockerfile"
REQUIREMENTS = REPO / "infra" / "worker-requirements.txt"


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def pins() -> dict[str, str]:
    lines = [line.strip() for line in REQUIREMENTS.read_text().splitlines()]
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


def test_every_copied_path_exists():
    copies = [shlex.split(args) for op, args in instructions() if op == "COPY"]
    assert copies
    for *sources, _destination in copies:
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"


def test_it_runs_the_worker_module_the_template_runs():
    [cmd] = [json.loads(args) for op, args in instructions() if op == "CMD"]
    assert cmd == ["python", "-m", "spark_detector", "run"]
    assert not [op for op, _ in instructions() if op == "ENTRYPOINT"]  # Command replaces CMD
    task = load_template()["Resources"]["WorkerTaskDefinition"]["Properties"]
    [container] = task["ContainerDefinitions"]
    assert container["Command"] == cmd


def test_it_is_slim_with_java_17_and_a_non_root_user():
    ops = instructions()
    [base] = [args for op, args in ops if op == "FROM"]
    assert base.startswith("python:3.1") and "slim" in base
    assert any("openjdk-17-jre-headless" in args for op, args in ops if op == "RUN")
    [user] = [args for op, args in ops if op == "USER"]
    assert user not in ("root", "0")


def test_the_worker_dependencies_are_pinned():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pinned = pins()
    for requirement in project["dependencies"]:
        name, lower = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?>=([\d.]+)", requirement).groups()
        if name == "aws-lambda-powertools":
            continue  # the trigger's, from its Lambda layer; the worker logs with json_logs
        assert name in pinned, f"{name} is not pinned in {REQUIREMENTS.name}"
        version = tuple(int(p) for p in re.findall(r"\d+", pinned[name])[:3])
        assert version >= tuple(int(p) for p in lower.split(".")), name


def test_the_worker_imports_nothing_the_image_lacks():
    """Every first-party package the worker imports is copied; Powertools is not imported."""
    copied = {shlex.split(args)[0] for op, args in instructions() if op == "COPY"}
    imports = set()
    for path in (REPO / "spark_detector").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imports.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                imports.update(alias.name.split(".")[0] for alias in node.names)
    first_party = {p.name for p in REPO.iterdir() if (p / "__init__.py").exists()}
    assert imports & first_party <= copied
    assert "aws_lambda_powertools" not in imports


def test_the_module_it_runs_exists():
    assert (REPO / "spark_detector" / "__main__.py").exists()


def test_it_ships_the_rds_ca_bundle_where_the_worker_looks_for_it():
    from spark_detector.config import RDS_CA_BUNDLE

    adds = [line.split() for line in DOCKERFILE.read_text().splitlines()
            if line.startswith("ADD ")]
    assert any(a[-1] == RDS_CA_BUNDLE and a[-2].startswith("https://truststore.pki.rds")
               for a in adds)


def test_the_executor_requirements_are_a_pinned_subset_of_the_workers():
    executor = REPO / "infra" / "executor-requirements.txt"
    lines = [line.strip() for line in executor.read_text().splitlines()]
    executor_pins = dict(line.split("==") for line in lines if line and not line.startswith("#"))
    assert "boto3" in executor_pins
    assert "psycopg2-binary" not in executor_pins  # the driver's alone
    worker_pins = pins()
    for name, version in executor_pins.items():
        assert worker_pins.get(name) == version, name
