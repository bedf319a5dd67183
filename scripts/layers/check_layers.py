#!/usr/bin/env python3
"""Fails when the modules of a crate import each other in a cycle.

For every crate under the repository (a folder with Cargo.toml and src/lib.rs or src/main.rs) it
reads each source file, resolves every module path it names (`use` trees and `crate::`, `super::`,
`self::` paths in code; comments and string literals are skipped) to an absolute module path, and
turns it into an edge between two sibling modules: `crate::run::FleetSetup` named in
`journal/mod.rs` is the edge journal -> run among the crate root's modules, `super::marks::X` in
`report/html.rs` is html -> marks among report's modules. A module naming its own parent or its own
children makes no edge (a parent re-exports its children; children use the parent's types).
Each set of siblings that reach each other (a strongly connected component) is reported with the
file and line of every edge in it, and the exit status is 1.

Test modules (`#[cfg(test)] mod ...`) count like any other code.

Usage: check_layers.py [REPO_ROOT]   (default: this script's repository)
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
KEYWORDS = {"crate", "super", "self"}


def strip_code(text: str) -> str:
    """`text` with comments and string/char literals replaced by spaces (newlines kept, so line
    numbers stay right)."""
    out = []
    i, n = 0, len(text)

    def blank(s: str) -> str:
        return "".join(c if c == "\n" else " " for c in s)

    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(blank(text[i:j]))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(blank(text[i:j]))
            i = j
        elif m := re.compile(r'b?r(#*)"').match(text, i):
            if i > 0 and re.match(r"[A-Za-z0-9_]", text[i - 1]):
                out.append(c)
                i += 1
                continue
            end = '"' + m.group(1)
            j = text.find(end, m.end())
            j = n if j < 0 else j + len(end)
            out.append(blank(text[i:j]))
            i = j
        elif c == '"' or (c == "b" and text.startswith('b"', i) and not _ident_before(text, i)):
            j = i + (2 if c == "b" else 1)
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(blank(text[i : j + 1]))
            i = j + 1
        elif c == "'":
            # A char literal ('a', '\n', '\u{1F600}'); otherwise a lifetime or label.
            m = re.compile(r"'(?:\\(?:u\{[0-9a-fA-F]+\}|x[0-9a-fA-F]{2}|.)|[^\\'])'").match(text, i)
            if m:
                out.append(blank(m.group(0)))
                i = m.end()
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _ident_before(text: str, i: int) -> bool:
    return i > 0 and re.match(r"[A-Za-z0-9_]", text[i - 1]) is not None


def expand_use_tree(tree: str) -> list[list[str]]:
    """The paths of a `use` tree: `a::{b, c::{d, e as f}, self}` -> [a,b], [a,c,d], [a,c,e], [a]
    (a glob ends in "*")."""
    tokens = re.findall(IDENT + r"|::|[{},*]", tree)
    paths: list[list[str]] = []

    def walk(i: int, prefix: list[str]) -> int:
        """Reads one tree from tokens[i]; returns the index after it."""
        path = list(prefix)
        while i < len(tokens):
            t = tokens[i]
            if t == "{":
                i += 1
                while i < len(tokens) and tokens[i] != "}":
                    if tokens[i] == ",":
                        i += 1
                        continue
                    i = walk(i, path)
                return i + 1
            if t == "*":
                paths.append(path + ["*"])
                return i + 1
            if t in (",", "}"):
                break
            if t == "::":
                i += 1
                continue
            if t == "as":
                i += 2  # the alias
                break
            path = path + [t] if t != "self" or not path else path
            i += 1
        paths.append(path)
        return i

    i = 0
    while i < len(tokens):
        i = walk(i, []) if tokens[i] not in (",", "}") else i + 1
    return paths


@dataclass
class Ref:
    """A module path named at `line` of `file`, from inside module `scope`."""

    file: str
    line: int
    scope: tuple[str, ...]
    path: list[str]
    text: str


USE_RE = re.compile(r"\buse\s+([^;]*);")
PATH_RE = re.compile(r"(?<![A-Za-z0-9_:])(crate|super|self)((?:\s*::\s*" + IDENT + r")+)")
MOD_RE = re.compile(r"\bmod\s+(" + IDENT + r")\s*([;{])")


def scan_file(path: str, rel: str, scope: tuple[str, ...]) -> tuple[list[Ref], set[tuple[str, ...]]]:
    """The module paths `path` names and the inline modules it declares (absolute paths)."""
    with open(path, encoding="utf-8") as f:
        code = strip_code(f.read())
    # Inline modules: which byte ranges belong to `mod name { ... }`.
    spans: list[tuple[int, int, str]] = []
    for m in MOD_RE.finditer(code):
        if m.group(2) != "{":
            continue
        depth, j = 1, m.end()
        while j < len(code) and depth:
            depth += {"{": 1, "}": -1}.get(code[j], 0)
            j += 1
        spans.append((m.start(), j, m.group(1)))

    def scope_at(pos: int) -> tuple[str, ...]:
        inner = [s for s in spans if s[0] <= pos < s[1]]
        inner.sort(key=lambda s: s[0])
        return scope + tuple(s[2] for s in inner)

    inline = {scope_at(s[0]) + (s[2],) for s in spans}

    def line_of(pos: int) -> int:
        return code.count("\n", 0, pos) + 1

    refs: list[Ref] = []
    used_spans: list[tuple[int, int]] = []
    for m in USE_RE.finditer(code):
        used_spans.append((m.start(), m.end()))
        for p in expand_use_tree(m.group(1)):
            refs.append(Ref(rel, line_of(m.start()), scope_at(m.start()), p, "use " + " ".join(m.group(1).split())))
    for m in PATH_RE.finditer(code):
        if any(a <= m.start() < b for a, b in used_spans):
            continue
        p = [m.group(1)] + [s.strip() for s in m.group(2).split("::") if s.strip()]
        refs.append(Ref(rel, line_of(m.start()), scope_at(m.start()), p, "".join(m.group(0).split())))
    return refs, inline


def resolve(ref: Ref, modules: set[tuple[str, ...]]) -> tuple[str, ...] | None:
    """The absolute path `ref` names, or None for other crates' paths."""
    p = ref.path
    if not p:
        return None
    if p[0] == "crate":
        base, rest = (), p[1:]
    elif p[0] in ("super", "self"):
        base = ref.scope
        i = 0
        while i < len(p) and p[i] in ("super", "self"):
            if p[i] == "super":
                if not base:
                    return None
                base = base[:-1]
            i += 1
        rest = p[i:]
    elif ref.scope + (p[0],) in modules:
        # A path starting with a child module's name (2018 uniform paths).
        base, rest = ref.scope, p
    else:
        return None
    return base + tuple(x for x in rest if x != "*")


@dataclass
class Edge:
    src: str
    dst: str
    where: list[Ref] = field(default_factory=list)


def crate_edges(src_dir: str, rel_root: str) -> dict[tuple[str, ...], dict[tuple[str, str], Edge]]:
    """Sibling edges of one crate, grouped by the parent module they are under."""
    files: list[tuple[str, str, tuple[str, ...]]] = []
    for dirpath, dirnames, filenames in os.walk(src_dir):
        dirnames[:] = sorted(d for d in dirnames if not (dirpath == src_dir and d == "bin"))
        for name in sorted(filenames):
            if not name.endswith(".rs"):
                continue
            full = os.path.join(dirpath, name)
            parts = os.path.relpath(full, src_dir)[:-3].split(os.sep)
            if parts[-1] == "mod" or (len(parts) == 1 and parts[0] in ("lib", "main")):
                parts = parts[:-1]
            if len(parts) == 1 and os.path.exists(os.path.join(src_dir, "lib.rs")) and name == "main.rs":
                continue
            files.append((full, os.path.relpath(full, rel_root), tuple(parts)))
    modules = {scope for _, _, scope in files}
    refs: list[Ref] = []
    for full, rel, scope in files:
        r, inline = scan_file(full, rel, scope)
        refs += r
        modules |= inline
    by_parent: dict[tuple[str, ...], dict[tuple[str, str], Edge]] = {}
    for ref in refs:
        target = resolve(ref, modules)
        if target is None:
            continue
        common = 0
        while common < min(len(target), len(ref.scope)) and target[common] == ref.scope[common]:
            common += 1
        if common >= len(ref.scope) or common >= len(target):
            continue  # names its own ancestor or descendant
        parent = ref.scope[:common]
        src, dst = ref.scope[common], target[common]
        if parent + (dst,) not in modules:
            continue  # an item of the parent, not a sibling module
        edge = by_parent.setdefault(parent, {}).setdefault((src, dst), Edge(src, dst))
        edge.where.append(ref)
    return by_parent


def cycles(edges: dict[tuple[str, str], Edge]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    graph: dict[str, list[str]] = {}
    for a, b in edges:
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def find_crates(root: str) -> list[str]:
    crates = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in ("target", "node_modules"))
        if "Cargo.toml" in filenames and os.path.isdir(os.path.join(dirpath, "src")):
            crates.append(dirpath)
    return crates


def check(root: str) -> list[str]:
    """One message per cycle found under `root`."""
    problems = []
    for crate in find_crates(root):
        src = os.path.join(crate, "src")
        name = os.path.relpath(crate, root)
        for parent, edges in sorted(crate_edges(src, root).items()):
            for comp in cycles(edges):
                where = "::".join(("crate",) + parent)
                lines = [f"{name}: modules of {where} import each other in a cycle: {', '.join(comp)}"]
                for (a, b), edge in sorted(edges.items()):
                    if a in comp and b in comp:
                        first = edge.where[0]
                        more = f" (+{len(edge.where) - 1} more)" if len(edge.where) > 1 else ""
                        lines.append(f"  {a} -> {b}: {first.file}:{first.line}: {first.text}{more}")
                problems.append("\n".join(lines))
    return problems


def main(argv: list[str]) -> int:
    root = argv[1] if len(argv) > 1 else os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    problems = check(root)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(
            f"check-layers: {len(problems)} module cycle(s): a lower module must not import a higher one "
            "(move the shared item down, or pass data in)",
            file=sys.stderr,
        )
        return 1
    print("check-layers: no module cycles")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
