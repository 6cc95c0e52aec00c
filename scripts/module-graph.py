#!/usr/bin/env python3
"""Prints the graph of a crate's modules (who names whom through `crate::` or `super::`
paths) and fails if it has a cycle.

    scripts/module-graph.py crates/broker/src [--depth N] [--dot] [--layers SPEC]

A module is a file's path under src (`services/produce.rs` is `services::produce`, a
`mod.rs` is its folder); with `--depth 1` (the default) modules are folded into their
top-level module, so `services::produce -> broker` becomes `services -> broker`. `#[cfg(test)]
mod tests` blocks are skipped: tests may reach anywhere. Comments are skipped.

`--layers "a b | c | d e"` also fails if a top-level module names one of a higher layer
(layers listed from the top; a module may name its own layer and those below).
"""
import os
import re
import sys
from collections import defaultdict


def module_of(src, path):
    rel = os.path.relpath(path, src)[:-3]
    parts = rel.split(os.sep)
    if parts[-1] == "mod":
        parts = parts[:-1]
    if parts in (["lib"], ["main"]):
        return []
    return parts


def strip(text):
    # Drop the unit tests, then comments (line and doc comments).
    m = re.search(r"#\[cfg\(test\)\]\s*mod tests\s*\{", text)
    if m:
        text = text[: m.start()]
    text = re.sub(r"//[^\n]*", "", text)
    return text


def expand_use_groups(text):
    """Flattens `use crate::{a, b::c}` one level so each path is seen."""
    out = []
    for m in re.finditer(r"\buse\s+((?:crate|super)(?:::\w+)*)::\{([^;]*)\};", text, re.S):
        base = m.group(1)
        for item in re.split(r",", m.group(2)):
            item = item.strip().split(" as ")[0].strip()
            item = re.sub(r"::\{.*", "", item, flags=re.S)
            if item and item != "self":
                out.append(base + "::" + item)
            elif item == "self":
                out.append(base)
    return out


def targets(src, mod, text, modules):
    paths = re.findall(r"\b(?:crate|super)(?:::\w+)+", text)
    paths += expand_use_groups(text)
    # A folder module names its children without a prefix (`use produce::ProduceBudget`).
    if tuple(mod) in dirmods:
        children = {m[-1] for m in modules if len(m) == len(mod) + 1 and list(m[:-1]) == mod}
        for c in children:
            if re.search(r"(?<![\w:])" + c + r"::", text):
                paths.append("crate::" + "::".join(mod + [c]))
    found = set()
    for p in paths:
        segs = p.split("::")
        if segs[0] == "super":
            base = list(mod)
            is_dir_mod = tuple(mod) in dirmods
            if not is_dir_mod:
                base = base[:-1]
            while segs and segs[0] == "super":
                segs = segs[1:]
                if segs and segs[0] == "super":
                    base = base[:-1]
            segs = base + segs
        else:
            segs = segs[1:]
        # Longest prefix that is a module.
        best = None
        for i in range(len(segs), 0, -1):
            if tuple(segs[:i]) in modules:
                best = tuple(segs[:i])
                break
        if best is not None and best != tuple(mod):
            found.add(best)
    return found


def main():
    args = sys.argv[1:]
    src = args[0]
    depth = 1
    dot = "--dot" in args
    if "--depth" in args:
        depth = int(args[args.index("--depth") + 1])
    global dirmods
    dirmods = set()
    files = {}
    for root, _, names in os.walk(src):
        for n in names:
            if n.endswith(".rs"):
                path = os.path.join(root, n)
                mod = module_of(src, path)
                if n == "mod.rs":
                    dirmods.add(tuple(mod))
                files[tuple(mod)] = path
    modules = set(files)
    edges = defaultdict(set)
    for mod, path in files.items():
        if mod in ((),):
            continue
        with open(path) as f:
            text = strip(f.read())
        for t in targets(src, list(mod), text, modules):
            a, b = mod[:depth], t[:depth]
            if a != b and not (a[: len(b)] == b or b[: len(a)] == a and len(a) < depth):
                edges["::".join(a)].add("::".join(b))
            elif a != b:
                edges["::".join(a)].add("::".join(b))
    nodes = sorted({"::".join(m[:depth]) for m in modules if m})
    if dot:
        print("digraph modules {")
        for a in nodes:
            for b in sorted(edges[a]):
                print(f'  "{a}" -> "{b}";')
        print("}")
    else:
        for a in nodes:
            print(f"{a} -> {', '.join(sorted(edges[a])) or '(nothing)'}")
    # Cycles: strongly connected components of more than one node.
    index, low, stack, on, sccs = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
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
                sccs.append(sorted(comp))

    for v in nodes:
        if v not in index:
            visit(v)
    bad = False
    if "--layers" in args:
        spec = args[args.index("--layers") + 1]
        rank = {}
        for i, layer in enumerate(spec.split("|")):
            for m in layer.split():
                rank[m] = i
        for a in nodes:
            top = a.split("::")[0]
            if top not in rank:
                print(f"layer of {top} not given", file=sys.stderr)
                bad = True
                continue
            for b in edges[a]:
                tb = b.split("::")[0]
                if tb in rank and rank[tb] < rank[top]:
                    print(f"upward: {a} -> {b}", file=sys.stderr)
                    bad = True
    if sccs or bad:
        for c in sccs:
            print("cycle:", " <-> ".join(c), file=sys.stderr)
        sys.exit(1)
    print("no cycles" + (", no upward edges" if "--layers" in args else ""), file=sys.stderr)


if __name__ == "__main__":
    main()
