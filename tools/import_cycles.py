"""Find import cycles between the modules of a package, function-level imports included.

    .venv/bin/python tools/import_cycles.py [--package tfcluster] [--path lib]

The import graph is grimp's (import-linter's engine: every `import` statement in a module, at any
depth); a cycle is a strongly connected group of two or more modules. Prints each cycle with one
import line per edge, and exits 1 when there is any; 0 and a one-line summary otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys


def cycles(graph) -> list[list[str]]:
    """Strongly connected components of two or more modules (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--package", default="tfcluster")
    p.add_argument("--path", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "lib"),
                   help="folder that holds the package (default: lib/ beside this script)")
    a = p.parse_args(argv)
    sys.path.insert(0, os.path.abspath(a.path))
    import grimp

    graph = grimp.build_graph(a.package, cache_dir=None)
    found = cycles(graph)
    for group in found:
        members = set(group)
        print(f"import cycle among {len(group)} modules:")
        for m in group:
            for w in sorted(graph.find_modules_directly_imported_by(m) & members):
                lines = graph.get_import_details(importer=m, imported=w)
                where = ", ".join(f"line {d['line_number']}: {d['line_contents']}" for d in lines) or "?"
                print(f"  {m} -> {w} ({where})")
    if found:
        return 1
    print(f"no import cycles among the {len(graph.modules)} modules of {a.package}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
