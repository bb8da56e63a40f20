"""lmrec's modules import each other without cycles, and only at module level.

Read from the source with ast (no TensorFlow import), so the check is fast and
covers every module, including ones no other test imports.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lmrec")


def _module_name(path: str) -> str:
    relative = os.path.relpath(path, os.path.dirname(ROOT))[: -len(".py")]
    parts = relative.split(os.sep)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, str]:
    found = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                found[_module_name(path)] = path
    return found


MODULES = _modules()


def _imported(node: ast.AST, module: str) -> list[str]:
    """The lmrec modules an Import/ImportFrom node loads (a package's names may be modules)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "lmrec"]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        package = module.split(".")[: -node.level] if node.level else []
        base = ".".join([*package, node.module] if node.module else package)
    else:
        base = node.module or ""
    if base.split(".")[0] != "lmrec":
        return []
    names = [base]
    names += [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
    return names


def _parents(name: str) -> list[str]:
    """Importing lmrec.a.b runs lmrec/__init__.py and lmrec/a/__init__.py first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        edges = set()
        for node in tree.body:  # module level only: the imports that run on import
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue  # annotations only; never imported at run time
            if isinstance(node, ast.If | ast.Try):
                inner = [n for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom)]
            else:
                inner = [node]
            for item in inner:
                for name in _imported(item, module):
                    if name in MODULES and name != module:
                        edges.add(name)
        graph[module] = edges
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in _parents(node):  # a package's __init__ is already running
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if not state.get(nxt):
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if not state.get(node):
            found = visit(node)
            if found:
                return found
    return None


def test_the_module_graph_has_no_cycle():
    assert len(MODULES) > 40, sorted(MODULES)
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()))


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _function_level_imports(path: str) -> list[tuple[int, str]]:
    with open(path, encoding="utf-8") as f:
        source = f.read()
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source, path)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.Import | ast.ImportFrom) and _imported(inner, "lmrec.x"):
                line = lines[inner.lineno - 1]
                before = lines[inner.lineno - 2].strip() if inner.lineno > 1 else ""
                if "#" not in line and not before.startswith("#"):
                    found.append((inner.lineno, line.strip()))
    return found


def test_no_function_level_lmrec_import_without_a_comment_saying_why():
    uncommented = {
        module: found
        for module, path in MODULES.items()
        if (found := _function_level_imports(path))
    }
    assert not uncommented, uncommented


@pytest.mark.parametrize("seed", [0, 1])
def test_every_module_imports_in_any_order(seed):
    """One fresh interpreter imports every module, in a shuffled order."""
    code = (
        "import importlib, random, sys\n"
        f"names = {sorted(MODULES)!r}\n"
        f"random.Random({seed}).shuffle(names)\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "print(len(names))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=os.path.dirname(ROOT),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == str(len(MODULES))
