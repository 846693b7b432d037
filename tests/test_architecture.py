"""The house's rules, read off the source: which room may import which (dependencies point
down the pipeline, docs/architecture.md), and no import cycles between modules."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "bta"

#: rooms every room may use: ids, errors, the JIT options, parameter declarations, plotting,
#: the decision-log schema
BASE = {"ids", "errors", "_jit", "_params", "_plot", "schema"}
#: what each room may import besides BASE (docs/architecture.md draws the same picture)
ALLOWED = {
    "ids": set(), "errors": set(), "_jit": {"errors"}, "_params": {"errors"},
    "_plot": set(), "schema": set(),
    "privacy": set(),
    "events": {"privacy"},
    "features": {"events", "privacy"},
    "scoring": set(),
    "segment": {"events", "features", "privacy", "scoring"},
    "serve": {"events", "features", "privacy", "scoring", "segment"},
    "evaluate": set(),  # reads any log; needs nothing of serve
    "dask": {"events", "features", "segment", "evaluate", "privacy", "scoring"},
    "report": {"evaluate", "segment", "features"},
    "config": {"events", "features", "privacy", "scoring", "segment", "serve", "evaluate"},
    "sim": {"events", "features", "privacy", "scoring", "segment", "serve", "evaluate"},
    "cli": {"*"},
    "__main__": {"cli"},
    "bta": {"events", "features", "segment", "evaluate", "privacy", "scoring"},
}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _room(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "bta"
    r = parts[1]
    return r


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """Modules of bta that ``path`` imports (``from bta import x`` counts as ``bta.x`` when x
    is a module)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and (node.module == "bta" or node.module.startswith("bta.")):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found = any((ROOT.parent / Path(*sub.split("."))).with_suffix(s).exists()
                            for s in (".py",)) or (ROOT.parent / Path(*sub.split("."))).is_dir()
                out.add(sub if found else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("bta."))
    return out


def _sources() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def test_each_room_imports_only_what_it_may():
    wrong = defaultdict(set)
    for path in _sources():
        src = _room(_module(path))
        allowed = ALLOWED[src]
        for mod in _imports(path, top_level_only=False):
            tgt = _room(mod)
            if tgt == src or tgt in BASE or tgt in allowed or "*" in allowed:
                continue
            wrong[f"{src} ({_module(path)})"].add(mod)
    assert not wrong, dict(wrong)


def test_no_module_imports_the_command_or_the_simulator():
    for path in _sources():
        src = _room(_module(path))
        if src in ("cli", "sim", "__main__"):
            continue
        bad = {m for m in _imports(path, top_level_only=False)
               if _room(m) in ("cli", "sim")}
        assert not bad, (_module(path), bad)


def test_no_import_cycles_between_modules():
    """Imports form no cycle, counting those inside functions and under ``TYPE_CHECKING``: a
    lazy import hides a cycle, it does not remove it."""
    modules = {_module(p): p for p in _sources()}
    graph = {m: {i for i in _imports(p, top_level_only=False) if i in modules and i != m}
             for m, p in modules.items()}
    # a package's __init__ importing its own submodules is how packages are built: the
    # submodule importing the package's public names back is the cycle to refuse
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def strong(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    import sys

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            strong(v)
    assert not cycles, cycles


@pytest.mark.parametrize("name", ["EventLog", "FeatureSpec", "build_features", "OnlineProfiles"])
def test_public_names_stay_where_users_import_them(name):
    import bta

    assert hasattr(bta, name)
    from bta.evaluate import ab_report  # noqa: F401
    from bta.privacy import PrivacyPolicy, erase  # noqa: F401
    from bta.segment import InterestClusters, Lookalike, PropensityModel, RuleSegment  # noqa: F401
    from bta.serve import Engine  # noqa: F401
