"""The import map of xpdl has no circle (import-linter's contracts in pyproject.toml check the layers in CI)."""

from __future__ import annotations

import pytest

grimp = pytest.importorskip("grimp", reason="grimp (comes with import-linter, in the test extra) is not installed")


def import_cycles(graph: object, modules: list[str]) -> list[list[str]]:
    """Every circle found by a depth-first walk of the direct imports among ``modules``."""
    inside = set(modules)
    edges = {m: sorted(set(graph.find_modules_directly_imported_by(m)) & inside) for m in modules}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def walk(module: str, path: list[str]) -> None:
        state[module] = 1
        path.append(module)
        for target in edges[module]:
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                walk(target, path)
        path.pop()
        state[module] = 2

    for module in modules:
        if module not in state:
            walk(module, [])
    return cycles


def test_no_module_of_xpdl_imports_itself_through_others():
    graph = grimp.build_graph("xpdl")
    assert import_cycles(graph, sorted(graph.modules)) == []


def test_the_cycle_finder_finds_a_circle():
    graph = grimp.ImportGraph()
    for name in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(name)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.c")
    graph.add_import(importer="p.c", imported="p.a")
    assert import_cycles(graph, ["p.a", "p.b", "p.c"]) == [["p.a", "p.b", "p.c", "p.a"]]
