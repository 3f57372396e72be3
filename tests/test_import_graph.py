"""The package's import graph, read statically with `ast`: no cycle, and no import running back up the layers.

Every `import` / `from ... import` of a `modeling_fli2moe` module counts, wherever it stands in a file (inside
functions, `if TYPE_CHECKING:` blocks, `try:` blocks), with relative imports resolved; `from pkg import name`
where `name` is a submodule counts as importing that submodule (and `pkg`'s `__init__` only when some other name
comes from it). The layers are declared below, lowest first: a module may import its own layer and the ones
below it. A package's `__init__` may import its own children; a module may not import the `__init__` of a
package it belongs to (its names come from the modules that define them).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

PACKAGE = "modeling_fli2moe"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

#: the package's layers, lowest first, by the first name under the package (a module or a subpackage)
LAYERS: list[tuple[str, list[str]]] = [
    ("leaf utilities", ["configuration_fli2moe", "random_state", "records", "precision", "stop_request",
                        "run_record", "locking", "integrity", "metrics"]),
    ("model", ["modeling_fli2moe", "kernels", "loading"]),
    ("inputs", ["encoders", "data", "processing_fli2moe"]),
    ("explanations", ["explain"]),
    ("jobs: data and run settings", ["feature_cache", "collator", "run_config", "model_card"]),
    ("jobs: output folders and checkpoints", ["checkpoints"]),
    ("jobs: training", ["training"]),
    ("jobs: publishing and whole-split explanations", ["hub", "report", "dataset_evaluation"]),
    ("entry points and test support", ["cli", "space", "testing"]),
]  # fmt: skip

#: the layers inside `explain/`, lowest first (its `__init__` re-exports the public names, above them all)
EXPLAIN_LAYERS: list[tuple[str, list[str]]] = [
    ("results and helpers", ["results", "_utils", "sampling"]),
    ("methods on any game", ["occlusion", "players", "shapley", "pair_masking"]),
    ("the example and its games", ["game"]),
    ("methods on an example", ["attribution", "faithfulness", "input_game"]),
    ("pipelines", ["leakage", "explainer"]),
]

#: what a one-example explanation must never reach, directly or through other modules
NOT_FROM_EXPLAIN = ("training", "feature_cache", "report")


# ------------------------------------------------------------------------------------------ the graph
def module_files(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """`{dotted module name: file}` of every module of the package under `root` (a package by its `__init__`)."""
    files = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


def _target(module: str, is_package: bool, node: ast.ImportFrom) -> str | None:
    """The absolute module a `from ... import` names (relative levels resolved)."""
    if not node.level:
        return node.module
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level - 1 > len(base):
        return None
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, modules: Iterable[str], package: str = PACKAGE) -> set[str]:
    """The package's modules that `module` (its source at `path`) imports, anywhere in the file."""
    modules = set(modules)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _target(module, is_package, node)
            if target is None:
                continue
            submodules = {f"{target}.{alias.name}" for alias in node.names} & modules
            found.update(submodules)
            if len(submodules) < len(node.names):  # some name comes from the module (or package __init__) itself
                found.add(target)
    inside = {name for name in found if name == package or name.startswith(package + ".")}
    unknown = inside - modules
    assert not unknown, f"{module} imports {sorted(unknown)}, which are not modules of the package"
    return inside - {module}


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    files = module_files(root, package)
    return {module: imports_of(module, path, files, package) for module, path in files.items()}


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One import cycle `[a, b, ..., a]`, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def reachable(graph: Mapping[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _short(module: str) -> str:
    return module if module == PACKAGE else module.removeprefix(PACKAGE + ".")


def _rank(module: str, layers: list[tuple[str, list[str]]], prefix: str) -> tuple[int, str] | None:
    """(index, name) of the layer holding `module` (by its first name under `prefix`), or None."""
    first = module.removeprefix(prefix + ".").split(".")[0]
    for i, (name, members) in enumerate(layers):
        if first in members:
            return i, name
    return None


def _upward(module: str, target: str, layers: list[tuple[str, list[str]]], prefix: str, where: str = "") -> str | None:
    """A message when `module` imports `target` from a higher layer (modules without a layer are left to
    `test_every_module_has_a_layer`)."""
    low, high = _rank(target, layers, prefix), _rank(module, layers, prefix)
    if low is None or high is None or low[0] <= high[0]:
        return None
    return f"{_short(module)} ({high[1]}) imports {_short(target)} ({low[1]}), a higher layer{where}"


def layer_violations(graph: Mapping[str, set[str]]) -> list[str]:
    """Every import that runs from a lower layer to a higher one, or into an enclosing package's `__init__`."""
    explain = f"{PACKAGE}.explain"
    bad = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if module == PACKAGE or target.startswith(module + "."):  # a package __init__ importing its children
                continue
            if module.startswith(target + "."):
                bad.append(f"{_short(module)} imports the __init__ of its own package {_short(target)}")
                continue
            message = _upward(module, target, LAYERS, PACKAGE)
            if message is None and module.startswith(explain + ".") and target.startswith(explain + "."):
                message = _upward(module, target, EXPLAIN_LAYERS, explain, " of explain/")
            if message is not None:
                bad.append(message)
    return bad


# ------------------------------------------------------------------------------------------- the tests
@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_every_module_has_a_layer(graph):
    missing = [_short(m) for m in graph if m != PACKAGE and _rank(m, LAYERS, PACKAGE) is None]
    explain = f"{PACKAGE}.explain"
    missing += [_short(m) for m in graph if m.startswith(explain + ".") and _rank(m, EXPLAIN_LAYERS, explain) is None]
    assert not missing, f"modules with no declared layer: {missing}; add each to LAYERS (or EXPLAIN_LAYERS) above"


def test_no_import_cycle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(_short(m) for m in cycle)


def test_no_import_runs_up_the_layers(graph):
    bad = layer_violations(graph)
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_explain_reaches_neither_training_nor_the_feature_cache_nor_the_report(graph):
    explain = [m for m in graph if m == f"{PACKAGE}.explain" or m.startswith(f"{PACKAGE}.explain.")]
    forbidden = {f"{PACKAGE}.{name}" for name in NOT_FROM_EXPLAIN}
    direct = {_short(m): sorted(_short(t) for t in graph[m] & forbidden) for m in explain if graph[m] & forbidden}
    assert not direct, f"explain/ imports {direct}"
    through = {_short(m): sorted(_short(t) for t in reachable(graph, m) & forbidden) for m in explain}
    assert not any(through.values()), f"explain/ reaches through other modules: {through}"


def test_the_graph_sees_hidden_and_relative_imports(graph):
    """Imports inside functions and relative ones are edges; `from pkg import submodule` names the submodule."""
    assert f"{PACKAGE}.explain.results" in graph[f"{PACKAGE}.report"]  # inside a function, `from .explain.results`
    assert f"{PACKAGE}.dataset_evaluation" in graph[f"{PACKAGE}.cli"]  # inside a function
    assert f"{PACKAGE}.explain" in graph[f"{PACKAGE}.cli"]  # `from .explain import Explainer`: the package's names
    assert f"{PACKAGE}.explain.game" in graph[f"{PACKAGE}.explain.attribution"]  # `from .game import ...`


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import a\n")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import a\n    from ..a import g\n")
    graph = import_graph(pkg, "pkg")
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.sub.b"}, "pkg.sub": set(), "pkg.sub.b": {"pkg.a"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    assert find_cycle({"x": {"y"}, "y": set()}) is None
