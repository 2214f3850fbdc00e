"""The worker image's Dockerfile: what it copies and runs exists, and every download is
pinned (tests/image/ builds and runs it)."""

from __future__ import annotations

import ast
import json
import re
import shlex
import tomllib

from infra.local.template import load_template
from tests.support.images import REPO, instructions, lock_pins

REQUIREMENTS = REPO / "requirements" / "worker.txt"
DOCKERIGNORE = REPO / ".dockerignore"






def pins() -> dict[str, str]:
    return lock_pins(REQUIREMENTS)


def build_args() -> dict[str, str]:
    """Each ``ARG NAME=default`` (a pin a build can override)."""
    return dict(args.split("=", 1) for op, args in instructions() if op == "ARG" and "=" in args)


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


def test_it_is_slim_python_3_11_pinned_by_digest_with_java_17_and_a_non_root_user():
    ops = instructions()
    assert ops[0] == ("ARG", "BASE_IMAGE=" + build_args()["BASE_IMAGE"])  # before FROM
    [base] = [args for op, args in ops if op == "FROM"]
    assert base == "${BASE_IMAGE}"
    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}",
                        build_args()["BASE_IMAGE"])
    assert any("openjdk-17-jre-headless" in args for op, args in ops if op == "RUN")
    [user] = [args for op, args in ops if op == "USER"]
    assert user not in ("root", "0")


def test_every_debian_package_it_installs_is_pinned_to_a_version():
    installs = [args for op, args in instructions() if op == "RUN" and "apt-get install" in args]
    assert installs
    for install in installs:
        packages = [word for word in shlex.split(install.split("apt-get install", 1)[1])
                    if not word.startswith("-")]
        packages = packages[:packages.index("&&")] if "&&" in packages else packages
        assert packages
        for package in packages:
            name, sep, version = package.partition("=")
            assert sep and version.startswith("${"), f"{name} is not pinned"
            assert build_args()[version[2:-1]], name


def test_pip_installs_only_the_hashed_lock_with_the_locked_build_backend():
    installs = [args for op, args in instructions() if op == "RUN" and "pip install" in args]
    [run] = installs
    commands = [c for c in run.split("&&") if "pip install" in c]
    assert len(commands) == 2
    for command in commands:
        assert "--require-hashes" in command and "--no-deps" in command
    assert commands[0].split()[-1].endswith("/build.txt")
    assert commands[1].split()[-1].endswith("/worker.txt")
    assert "--no-build-isolation" in commands[1]  # pyspark is built with the locked setuptools


def test_the_worker_dependencies_are_pinned():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pinned = pins()
    for requirement in project["dependencies"]:
        name, lower = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?>=([\d.]+)", requirement).groups()
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


def test_it_ships_the_rds_ca_bundle_where_the_worker_looks_for_it_checked_by_its_hash():
    from spark_detector.config import RDS_CA_BUNDLE

    [add] = [args.split() for op, args in instructions() if op == "ADD"]
    assert add[-2:] == ["${RDS_CA_URL}", RDS_CA_BUNDLE]
    assert build_args()["RDS_CA_URL"].startswith("https://truststore.pki.rds.amazonaws.com/")
    assert re.fullmatch(r"[0-9a-f]{64}", build_args()["RDS_CA_SHA256"])
    ops = instructions()
    check = ops[ops.index(("ADD", " ".join(add))) + 1]
    assert check[0] == "RUN" and "sha256sum --check" in check[1]
    assert f"${{RDS_CA_SHA256}}  {RDS_CA_BUNDLE}" in check[1]


def test_the_build_context_holds_what_it_copies_and_nothing_else():
    rules = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "*"  # everything out (.venv, data, caches), then what is copied back in
    admitted = {rule[1:] for rule in rules if rule.startswith("!")}
    copied = {source for op, args in instructions() if op == "COPY"
              for source in shlex.split(args)[:-1]}
    assert admitted == copied


def test_the_executor_requirements_are_a_pinned_subset_of_the_workers():
    executor = REPO / "infra" / "executor-requirements.txt"
    lines = [line.strip() for line in executor.read_text().splitlines()]
    executor_pins = dict(line.split("==") for line in lines if line and not line.startswith("#"))
    assert "boto3" in executor_pins
    assert "psycopg2-binary" not in executor_pins  # the driver's alone
    worker_pins = pins()
    for name, version in executor_pins.items():
        assert worker_pins.get(name) == version, name
