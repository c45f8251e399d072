#!/usr/bin/env python3
"""Checks stratus-server's layering: every `crate::` path a module uses points to a lower
layer (or within its own folder, without a cycle). Prints the edges that break it and
exits 1; `--edges` prints every module-to-module edge.

Layers, highest first (a module may use only those below it):
  server; admin, worker, broker, hooks, events; node; connection, messages; config; model; stats, tls
A path through the crate root's re-exports (`crate::Config`) names no layer: it is refused
too (name the module that defines it).
"""
import os
import re
import sys
from collections import defaultdict

SRC = os.path.join(os.path.dirname(__file__), "..", "crates", "stratus-server", "src")
LAYER = {
    "server": 5,
    "admin": 4, "worker": 4, "broker": 4, "events": 4, "hooks": 4,
    "node": 3.5,
    "connection": 3, "messages": 3,
    "config": 2,
    "model": 1,
    "stats": 0, "tls": 0,
    "testing": 9,
}


def module_of(path):
    rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib"):
        rel = rel[:-1]
    if rel and rel[0] == "bin":
        return None
    return "::".join(rel)


def code_of(text):
    """The text without comments and without `#[cfg(test)]` modules."""
    text = re.sub(r"//[^\n]*", "", text)
    cut = re.search(r"#\[cfg\(test\)\]\s*mod tests", text)
    return text[: cut.start()] if cut else text


def main():
    uses = defaultdict(set)
    root_paths = []
    for root, _, files in os.walk(SRC):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(root, name)
            module = module_of(path)
            if module is None or "tests" in module.split("::"):
                continue
            text = code_of(open(path).read())
            for m in re.finditer(r"crate::([a-z_]+(?:::[a-z_]+)?)", text):
                uses[module].add(m.group(1))
            for m in re.finditer(r"crate::([A-Z]\w*)", text):
                root_paths.append(f"{module} -> crate::{m.group(1)}")
            for m in re.finditer(r"use crate::\{([^}]*)\}", text):
                for item in m.group(1).split(","):
                    item = item.strip().split("::")[0]
                    if item:
                        uses[module].add(item)
    bad = [f"{p} (through the crate root)" for p in root_paths]
    edges = set()
    for module, targets in uses.items():
        top = module.split("::")[0] if module else ""
        for target in targets:
            ttop = target.split("::")[0]
            if ttop not in LAYER or ttop == top or not top or top == "testing":
                continue
            edges.add((module, target))
            if LAYER[ttop] >= LAYER.get(top, 99):
                bad.append(f"{module} -> {target}")
    # Cycles between files of one folder.
    graph = defaultdict(set)
    modules = set(uses)
    for module, targets in uses.items():
        for target in targets:
            for candidate in (target, target.rsplit("::", 1)[0]):
                if candidate in modules and candidate != module:
                    graph[module].add(candidate)
                    break
    seen, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        stack.pop()

    for node in sorted(graph):
        visit(node)
    if "--edges" in sys.argv:
        for a, b in sorted(edges):
            print(f"{a} -> {b}")
    for line in sorted(bad):
        print("upward:", line)
    for cycle in cycles:
        print("cycle:", " -> ".join(cycle))
    if bad or cycles:
        sys.exit(1)
    print(f"stratus-server layers: {len(uses)} modules, no upward import, no cycle")


main()
