"""Every command the docs name still starts: a module that stops importing, a subcommand
that disappears, a make target that is renamed or a test the docs point to that no longer
exists fails here, not in a user's terminal.

Each ``python -m MODULE [SUBCOMMAND]`` of README.md, CONTRIBUTING.md and docs/*.md runs as
``python -m`` does (runpy, in this process: one import of pyspark for all of them) with
``--help``, which must print its usage and exit 0.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import runpy
import sys
import tomllib

import pytest

from tests.conftest import REPO_ROOT

DOCS = [REPO_ROOT / "README.md", REPO_ROOT / "CONTRIBUTING.md",
        *sorted((REPO_ROOT / "docs").glob("*.md"))]
TEXT = "\n".join(path.read_text(encoding="utf-8") for path in DOCS)
# runpy's note that a package's submodule was imported before it ran it as __main__: harmless
pytestmark = pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
FIRST_PARTY = {p.name for p in REPO_ROOT.iterdir() if (p / "__init__.py").exists()}


def documented_modules() -> list[str]:
    named = set(re.findall(r"python -m ([A-Za-z_][\w.]*)", TEXT))
    return sorted(m for m in named if m.split(".")[0] in FIRST_PARTY)


def documented_subcommands() -> list[tuple[str, str]]:
    """(module, subcommand) for each ``python -m MODULE WORD`` where WORD is a subcommand."""
    pairs = set(re.findall(r"python -m ([A-Za-z_][\w.]*) ([a-z][a-z-]*)\b", TEXT))
    return sorted((m, sub) for m, sub in pairs
                  if m.split(".")[0] in FIRST_PARTY and subcommands_of(m))


def subcommands_of(module: str) -> set[str]:
    return {"producer": {"generate", "stream"},
            "spark_detector": {"run", "status", "backfill", "skip-seq", "replay"},
            "infra.image": {"build", "push", "standin-base", "tools"}}.get(module, set())


def run_help(module: str, *words: str) -> str:
    """``python -m module *words --help``: its output; fails unless it exits 0."""
    out = io.StringIO()
    argv = sys.argv
    sys.argv = [module, *words, "--help"]
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        sys.argv = argv
    assert exited.value.code in (0, None), f"python -m {module} {' '.join(words)} --help"
    return out.getvalue()


def test_the_docs_name_the_main_commands():
    modules = documented_modules()
    for expected in ("producer", "spark_detector", "infra.local", "bench.bench_shards"):
        assert expected in modules


@pytest.mark.parametrize("module", documented_modules())
def test_each_documented_module_prints_its_usage(module):
    assert "usage:" in run_help(module)


@pytest.mark.parametrize(("module", "subcommand"), documented_subcommands())
def test_each_documented_subcommand_prints_its_usage(module, subcommand):
    assert subcommand in subcommands_of(module), f"python -m {module} {subcommand}"
    assert "usage:" in run_help(module, subcommand)


def test_each_documented_make_target_exists():
    makefile = (REPO_ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-zA-Z][\w-]*):", makefile, re.MULTILINE))
    named = set(re.findall(r"`make ([a-z][\w-]*)", TEXT))
    assert named
    assert named - targets == set()


def test_each_console_script_resolves_to_a_main():
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"txn-producer", "txn-worker", "txn-local"}
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target


def test_each_test_the_docs_point_to_exists():
    references = set(re.findall(r"(test_\w+\.py)::(test_\w+)", TEXT))
    assert references
    missing = []
    for filename, name in sorted(references):
        files = list((REPO_ROOT / "tests").rglob(filename))
        if not any(re.search(rf"^\s*def {name}\(", f.read_text(), re.MULTILINE) for f in files):
            missing.append(f"{filename}::{name}")
    assert missing == []
