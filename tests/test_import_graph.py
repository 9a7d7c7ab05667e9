"""The engine's modules import each other in one direction only.

Every ``import`` and ``from ... import`` inside ``benchmark/`` and ``architectures/`` counts, also the
ones inside functions (a lazy import still ties two modules together: neither can be read, tested or
replaced without the other). A cycle in that graph is a design error this test names.
"""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("benchmark", "architectures")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@lru_cache(maxsize=None)
def _parse(path: Path) -> ast.Module:
    """A module's syntax tree, parsed once per test process (several tests walk all ~120 files)."""
    return ast.parse(path.read_text())


@lru_cache(maxsize=1)
def import_graph() -> dict[str, frozenset[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    modules = {_module_name(p): p for p in files}
    graph: dict[str, set[str]] = {m: set() for m in modules}

    def known(name: str) -> str | None:
        # `from benchmark.data import cache` names a module; `from .x import f` names x
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(_parse(path)):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_pkg, node)
                targets = [f"{base}.{a.name}" for a in node.names] or [base]
            for t in targets:
                dep = known(t)
                # a package's __init__ re-exporting its own submodules is not a cycle with them
                if dep and dep != mod and not dep.startswith(mod + ".") and not mod.startswith(dep + "."):
                    graph[mod].add(dep)
    return {m: frozenset(deps) for m, deps in graph.items()}   # shared between tests: read-only


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_finder_sees_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_graph_reads_lazy_imports():
    g = import_graph()
    # generate() imports the tracking module inside the function, only when it reads MLflow
    assert "benchmark.core.tracking" in g["benchmark.results.leaderboard.generate"]
    assert "benchmark.core.errors" in g["benchmark.run.config"]


#: the layers of the engine, lowest first: a module may import its own layer and the ones before it.
#: core (errors, paths, tracking, checkpoints) -> data, losses and architectures (what a run is made
#: of) -> run (one training run: config, train, evaluate, predict) -> results (exports, statistics,
#: leaderboard pages: they read runs, never the machinery that made them) -> campaigns (many runs:
#: tuning, suites, protocols, searches) -> cli (the `bench` commands).
LAYERS = (("core",), ("data", "losses", "architectures"), ("run",), ("results",), ("campaigns",), ("cli",))


def layer_of(module: str) -> int:
    parts = module.split(".")
    name = "architectures" if parts[0] == "architectures" else (parts[1] if len(parts) > 1 else "core")
    for level, names in enumerate(LAYERS):
        if name in names:
            return level
    raise AssertionError(f"{module} sits in no layer: put it in one of the folders {LAYERS}")


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
                  for m, deps in graph.items() for d in deps if layer_of(d) > layer_of(m))


def test_layer_check_sees_a_climb():
    assert layer_violations({"benchmark.run.train": {"benchmark.core.errors"}}) == []
    assert layer_violations({"benchmark.results.x": {"benchmark.campaigns.protocol"}}) == [
        "benchmark.results.x (results) imports benchmark.campaigns.protocol (campaigns)"]


def test_every_module_sits_in_a_layer():
    for module in import_graph():
        layer_of(module)  # raises for a module outside the folders
    top = {p.name for p in (ROOT / "benchmark").iterdir() if p.suffix == ".py" and p.name != "__init__.py"}
    assert top == set(), f"modules outside the layer folders: {sorted(top)}"


def test_imports_only_go_down_the_layers():
    climbs = layer_violations(import_graph())
    assert climbs == [], "imports that climb a layer: " + "; ".join(climbs)


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert cycles == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def _external_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(_parse(path)):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_only_the_tracking_module_imports_mlflow():
    """Every MLflow call goes through ``benchmark.core.tracking`` (its docstring's promise): no other
    module of the engine imports mlflow, lazily or not."""
    importers = sorted(str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
                       if "mlflow" in _external_imports(p))
    assert importers and all(p.startswith("benchmark/core/tracking/") for p in importers), importers
