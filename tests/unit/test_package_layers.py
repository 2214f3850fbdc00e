"""The package reads top-down: the commands (``__main__``), then ``ops`` and ``worker``, then the
settings, then ``spark`` and ``engine``, then the shared base modules, then ``chunk_contract``.
A module imports only from layers below its own or from its own package, and no import forms a
cycle (docs/worker.md, "Where things are")."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("spark_detector", "chunk_contract", "json_logs")

# (layer, module prefix): the first matching prefix names a module's layer.
LAYERS = (
    (6, "spark_detector.__main__"),
    (5, "spark_detector.ops"),
    (5, "spark_detector.worker"),
    (4, "spark_detector.config"),
    (3, "spark_detector.engine"),
    (3, "spark_detector.spark"),
    (1, "spark_detector"),
    (0, "chunk_contract"),
    (0, "json_logs"),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> tuple[int, str]:
    for layer, prefix in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return layer, prefix
    raise AssertionError(f"{module} has no layer")


def package_of(module: str) -> str:
    """The package a module belongs to for the same-package rule (``spark_detector.spark``)."""
    return layer_of(module)[1]


def imports_of(path: Path, module: str) -> set[str]:
    """Every project module ``path`` imports, at the top or inside a function."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            # ``from a import b``: b may be a module of a, else it is a name in a.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                     for alias in node.names]
        else:
            continue
        found.update(name for name in names if name.split(".")[0] in PACKAGES)
    found.discard(module)
    return found


FILES = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
MODULES = set(FILES)


def graph() -> dict[str, set[str]]:
    return {module: imports_of(path, module) for module, path in FILES.items()}


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in sorted(edges.items()):
        layer, package = layer_of(module)
        for target in sorted(targets):
            if target not in MODULES and not any(m.startswith(target + ".") for m in MODULES):
                continue
            target_layer, target_package = layer_of(target)
            if target_package == package and target_layer == layer:
                continue
            if target_layer >= layer:
                wrong.append(f"{module} imports {target}")
    return wrong


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, done, path = [], set(), []

    def visit(module: str) -> None:
        if module in path:
            found.append([*path[path.index(module):], module])
            return
        if module in done:
            return
        path.append(module)
        for target in sorted(edges.get(module, ())):
            if target in edges:
                visit(target)
        path.pop()
        done.add(module)

    for module in sorted(edges):
        visit(module)
    return found


def test_every_import_points_down_the_layers():
    assert upward_imports(graph()) == []


def test_no_module_imports_itself_back_through_others():
    assert cycles(graph()) == []


def test_ops_never_imports_the_worker_and_the_worker_never_imports_ops():
    crossing = [f"{module} imports {target}" for module, targets in graph().items()
                for target in targets
                if {package_of(module), package_of(target)} == {"spark_detector.ops",
                                                                 "spark_detector.worker"}]
    assert crossing == []


def test_the_checks_see_an_upward_import_and_a_cycle():
    edges = {"spark_detector.engine.state": {"spark_detector.worker.loop"},
             "spark_detector.worker.loop": {"spark_detector.engine.state"}}
    assert upward_imports(edges) == [
        "spark_detector.engine.state imports spark_detector.worker.loop"]
    assert cycles(edges)


def test_no_module_is_much_over_400_lines():
    long = {module: lines for module, path in sorted(FILES.items())
            if (lines := len(path.read_text().splitlines())) > 420}
    assert long == {}
