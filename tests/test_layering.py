"""The import graph of src/fedi2i, read with ast (nothing is imported): no arrow goes up a layer, no cycles.

Layers, bottom to top (a module may import only modules of a strictly lower rank, or its own package):

====  =====================================  ==========================================================
rank  modules                                why there
====  =====================================  ==========================================================
0     errors, seeding, fedi2i/__init__       helpers every layer needs (and the root), importing nothing
1     io                                     atomic writes and guarded reads (raises errors)
1     secagg_settings                        the SecAgg settings model the config embeds (errors only)
2     config                                 the validated settings every layer reads
3     runfolder                              the run folder's files and fingerprint (config + io)
4     metrics, tissue_metrics                pure image metrics over arrays
10    data                                   SynthRAD layout, phantoms, slices, federation
20    models                                 the U-Net
30    evaluate, figures                      score / draw a model's output on a data set
31    inference                              a saved model applied to a volume (uses evaluate)
35    privacy                                the DP accountant (config only)
40    fl                                     clients, aggregation, SecAgg, RoundLoop, both runtimes
50    training                               one run from a config (data -> RoundLoop -> outputs)
60    attacks                                inversion, membership, poisoning over runs and records
70    audit                                  the audit plan, cells and report
80    cli                                    typer commands
====  =====================================  ==========================================================

Imports inside functions count too (a lazy upward import is still an upward arrow).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "fedi2i"

RANK = {"errors": 0, "seeding": 0, "io": 1, "secagg_settings": 1, "config": 2, "runfolder": 3, "metrics": 4,
        "tissue_metrics": 4, "data": 10, "models": 20, "evaluate": 30, "figures": 30, "inference": 31, "privacy": 35, "fl": 40,
        "training": 50, "attacks": 60, "audit": 70, "cli": 80, "__init__": 0}

def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["fedi2i", *parts])


def imports_of(path: Path) -> set[str]:
    """Every fedi2i module ``path`` imports, at module level or inside functions (relative ones resolved)."""
    own = module_name(path).split(".")
    package = own if path.name == "__init__.py" else own[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)  # "from pkg import module"
    return {m for m in found if m == "fedi2i" or m.startswith("fedi2i.")}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for target in imports_of(path):
            while target not in modules and "." in target:  # "from fedi2i.x import Name" -> fedi2i.x
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name:
                edges[name].add(target)
    return {m: edges.get(m, set()) for m in modules}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_top_level_module_has_a_layer() -> None:
    unplaced = sorted({layer(m) for m in graph()} - set(RANK))
    assert not unplaced, f"give these modules a rank in RANK (and the table above): {unplaced}"


def test_no_import_goes_up_a_layer() -> None:
    upward = []
    for importer, targets in graph().items():
        for target in targets:
            a, b = layer(importer), layer(target)
            if a != b and RANK[b] >= RANK[a]:
                upward.append(f"{importer} ({a}, rank {RANK[a]}) imports {target} ({b}, rank {RANK[b]})")
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_between_modules() -> None:
    # a module importing its own package (whose __init__ re-exports it) is not a cycle worth breaking
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph().items()}
    found = cycles(edges)
    assert not found, f"import cycles: {found}"


@pytest.mark.parametrize("edges, expected", [
    ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
    ({"a": {"b"}, "b": set()}, []),
])
def test_cycle_finder(edges: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert cycles(edges) == expected


def test_the_graph_is_read() -> None:
    """The reader sees real arrows (a reader that finds nothing would pass every test above)."""
    g = graph()
    assert "fedi2i.fl.round_loop" in g["fedi2i.training"]
    assert "fedi2i.seeding" in g["fedi2i.fl.client"]
    assert "fedi2i.fl.secagg.client" in g["fedi2i.fl.secagg"]  # relative import resolved
