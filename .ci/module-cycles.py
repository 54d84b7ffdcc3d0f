#!/usr/bin/env python3
"""The library's modules in dependency order, and any cycle among them.

    python3 .ci/module-cycles.py [SRC]      (SRC defaults to src)

A module is a top-level module of the library (`src/x.rs` or `src/x/`,
its submodules included); it depends on another when its code (comments
left out) names `crate::other`, in a path or a `use crate::{...}` group,
or an item that `lib.rs` re-exports from it (`crate::LockFile`). The
binary (`main.rs`, `src/bin/`) is not part of the library.

Prints the modules bottom-up (each after everything it uses) with their
dependencies, then exits 1 if modules depend on each other in a cycle,
naming them.
"""

import os
import re
import sys


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def top_level_names(group):
    """The first path segment of each item of a `use crate::{...}` group."""
    names, depth, current = [], 0, ""
    for ch in group:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            names.append(current)
            current = ""
        else:
            current += ch
    names.append(current)
    out = set()
    for item in names:
        m = re.match(r"\s*([a-z_][a-z0-9_]*)", item)
        if m:
            out.add(m.group(1))
    return out


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "src"
    lib = strip_comments(open(os.path.join(root, "lib.rs")).read())
    reexported = {}
    for module, items in re.findall(r"pub use ([a-z_]+)::\{([^}]*)\}", lib):
        for item in items.split(","):
            reexported[item.strip()] = module
    for module, item in re.findall(r"pub use ([a-z_]+)::([A-Za-z_]+);", lib):
        reexported[item] = module

    deps = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "bin"]
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, root)[:-3].split(os.sep)
            if parts in (["lib"], ["main"]):
                continue
            module = parts[0]
            text = strip_comments(open(path).read())
            used = set(re.findall(r"crate::([a-z_][a-z0-9_]*)", text))
            for group in re.findall(r"crate::\{(.*?)\};", text, flags=re.S):
                used |= top_level_names(group)
            for item in re.findall(r"crate::([A-Z][A-Za-z0-9_]*)", text):
                if item in reexported:
                    used.add(reexported[item])
            deps.setdefault(module, set()).update(used)
    modules = set(deps)
    graph = {m: sorted(d for d in used if d in modules and d != m) for m, used in deps.items()}

    # Strongly connected components (Tarjan), then a bottom-up order.
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
            components.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    # Tarjan emits components after everything they reach: bottom-up.
    for component in components:
        for m in component:
            print(f"{m}: {' '.join(graph[m]) or '-'}")
    cycles = [c for c in components if len(c) > 1]
    for c in cycles:
        print(f"module cycle: {' <-> '.join(c)}", file=sys.stderr)
    if cycles:
        sys.exit(1)
    print(f"{len(graph)} modules, no cycle")


if __name__ == "__main__":
    main()
