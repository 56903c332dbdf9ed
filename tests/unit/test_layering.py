"""The private APIs of faust and aiokafka are used in one module only, ``app.kafka.transport``
(import-linter checks the package layering itself: ``make lint``)."""

from __future__ import annotations

import ast
from pathlib import Path

from app.settings import REPO_ROOT

ADAPTER = Path("app/kafka/transport.py")
PRIVATE_MODULES = (
    "aiokafka.conn",
    "aiokafka.protocol",
    "aiokafka.producer",
    "aiokafka.consumer",
    "aiokafka.client",
    "faust.transport",
)
NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make"}  # public despite the underscore


def modules() -> dict[Path, ast.Module]:
    return {
        path.relative_to(REPO_ROOT): ast.parse(path.read_text()) for path in sorted((REPO_ROOT / "app").rglob("*.py"))
    }


def own_private_names(trees: dict[Path, ast.Module]) -> set[str]:
    """Private attributes the app defines itself (``self._x = ...``, methods named ``_x``), outside the adapter."""
    names = set()
    for path, tree in trees.items():
        if path == ADAPTER:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and node.attr.startswith("_"):
                names.add(node.attr)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("_"):
                names.add(node.name)
    return names


def test_no_module_but_the_adapter_reads_another_library_private_attribute() -> None:
    trees = modules()
    own = own_private_names(trees) | NAMEDTUPLE_API
    found = []
    for path, tree in trees.items():
        if path == ADAPTER:
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith("__"):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"}:
                continue
            if node.attr not in own:
                found.append(f"{path}:{node.lineno} {ast.unparse(node)}")
    assert not found, "private upstream names outside app/kafka/transport.py:\n" + "\n".join(found)


def test_no_module_but_the_adapter_imports_a_private_upstream_module() -> None:
    found = []
    for path, tree in modules().items():
        if path == ADAPTER:
            continue
        for node in ast.walk(tree):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            found += [f"{path}:{node.lineno} {name}" for name in names if name.startswith(PRIVATE_MODULES)]
    assert not found, "private upstream modules imported outside app/kafka/transport.py:\n" + "\n".join(found)
