"""The package's shape: one idea per module, imports flowing one way, a declared public surface."""

from __future__ import annotations

import ast
from pathlib import Path

import lightning_lossval

PACKAGE = Path(lightning_lossval.__file__).parent


def _imports(path: Path) -> set[str]:
    """The package modules ``path`` imports, at any depth of its code (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lightning_lossval"):
            if node.module == "lightning_lossval":  # from lightning_lossval import patching
                found |= {f"lightning_lossval.{a.name}" for a in node.names if (PACKAGE / f"{a.name}.py").exists()}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lightning_lossval.")}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {f"lightning_lossval.{p.stem}": p for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    return {name: _imports(path) & set(modules) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for child in sorted(graph[node]):
            if state.get(child) == 1:
                return path + [node, child]
            if child not in state and (found := visit(child, path + [node])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [])):
            return found
    return None


def test_the_module_graph_has_no_cycle():
    graph = _graph()
    assert "lightning_lossval.callback" in graph and graph["lightning_lossval.callback"]  # the walk sees imports
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    # the check can fail: a graph with a cycle is reported
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_pure_modules_do_not_import_lightning():
    for name in ("sinkhorn", "objective", "updates", "losses", "metrics", "noise", "report"):
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not any(m.split(".")[0] in ("lightning", "pytorch_lightning") for m in modules), name


def test_modules_stay_small_and_the_callback_thin():
    sizes = {p.name: len(p.read_text().splitlines()) for p in PACKAGE.glob("*.py")}
    assert max(sizes.values()) <= 400, sizes
    tree = ast.parse((PACKAGE / "callback.py").read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "LossValCallback"]
    assert cls.end_lineno - cls.lineno + 1 <= 250


def test_the_public_surface_is_declared_and_importable():
    names = set(lightning_lossval.__all__)
    assert {"LossValCallback", "LossValMixin", "IndexedDataModule", "index_dataloader", "PRESETS"} <= names
    assert {"Objective", "Sinkhorn", "Adam", "Normalized", "Balanced", "LossValError", "DataError"} <= names
    assert all(hasattr(lightning_lossval, name) for name in names)
    from lightning_lossval import ConfigError, DataError, LossValError, ResumeError

    assert all(issubclass(e, LossValError) and issubclass(e, ValueError) for e in (ConfigError, DataError, ResumeError))
