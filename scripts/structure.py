#!/usr/bin/env python3
"""Checks the crate's structure, so that it cannot drift back unnoticed.

  scripts/structure.py [--graph] [REPO]     (REPO: default, this script's repo)

1. Module graph. The top-level modules are the `mod X;` lines of src/lib.rs;
   src/X.rs and all of src/X/ belong to X. Each `crate::Y` path (`use`,
   grouped `use crate::{a, b::{c}}`, inline) and each `super::` chain that
   climbs to the crate root is an edge X -> Y. A cycle between modules fails,
   and so does an edge up the LAYERS table (the architecture's order).
2. No .rs file under src/ over MAX_FILE_LINES lines.
3. No fn over MAX_FN_LINES lines in DATA_PATH, the code every packet runs.

Comments and literals are blanked first; test code is left out: tests.rs,
*_tests.rs, each item under #[cfg(test)], and the files of a `#[cfg(test)]
mod x;`. This is a sketch of Rust's syntax, enough for this codebase: a file
whose braces do not balance after blanking is reported, not guessed around.
One line per violation, then `structure: N modules, M edges, K violations`;
exit 1 if K > 0. --graph also prints the edges. Tested by structure_test.py.
"""
import re
import sys
from collections import defaultdict, deque
from pathlib import Path

# The architecture, lowest layer first: a module imports only from lower layers or its own.
LAYERS = [
    ["bucket", "shape", "lograte", "sys", "wire", "route", "stats", "udp"],
    ["config"],
    ["relay", "upstream", "pool", "rules", "quota"],
    ["snapshot"],
    ["worker"],
    ["docker"],
    ["front", "hostwatch"],
    ["control", "doctor", "upgrade"],
    ["cli"],
]
MAX_FILE_LINES = 800
MAX_FN_LINES = 70
DATA_PATH = {"front", "worker", "relay", "udp", "pool", "upstream", "wire", "shape"}

TOKEN = re.compile(r"""//|/\*|(?<!\w)[bc]?r(#*)"|"|'""")
STRING = re.compile(r'"(?:\\.|[^"\\])*"', re.S)
CHAR = re.compile(r"""'(?:\\(?:x..|u\{[^}]*\}|.)|[^\\'])'""")  # else it is a lifetime
CFG_TEST = re.compile(r"#\[cfg\(test\)\]")
LEAD = r"\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?"  # more attributes, visibility
ITEM = re.compile(LEAD + r"(?:(?:async|const|unsafe|extern)\s+)*"
                  r"(?:fn|mod|use|impl|struct|enum|union|trait|type|const|static|let|macro_rules!)\W")
MOD_DECL = re.compile(LEAD + r"mod\s+(\w+)\s*;")
REF = re.compile(r"(?<![\w:])(crate|(?:super::)*super)::(\{|\w+)")
FN = re.compile(r"\bfn\s+(\w+)")
COMMENT = re.compile(r"/\*|\*/")
BRACKETS = re.compile(r"[][(){};]")
GROUP = re.compile(r"[{},]")


def blank(s):
    return re.sub(r"[^\n]", " ", s)  # keeps newlines, so line numbers still match


def strip(text):
    """The code with comments and string/char literals blanked."""
    out, i = [], 0
    while m := TOKEN.search(text, i):
        s, tok = m.start(), m.group()
        if tok == "//":
            e = text.find("\n", s)
            e = len(text) if e < 0 else e
        elif tok == "/*":  # block comments nest
            depth, e = 0, s
            for c in COMMENT.finditer(text, s):
                depth += 1 if c.group() == "/*" else -1
                if depth == 0:
                    e = c.end()
                    break
        elif tok == "'":
            c = CHAR.match(text, s)
            e = c.end() if c else s + 1
            if not c:  # a lifetime: keep it
                out.append(text[i:e])
                i = e
                continue
        elif tok == '"':
            e = STRING.match(text, s).end()
        else:  # raw string r#"..."#
            e = text.index('"' + m.group(1), m.end()) + 1 + len(m.group(1))
        out.append(text[i:s] + blank(text[s:e]))
        i = e
    return "".join(out) + text[i:]


def close(code, i):
    """End of the item or block starting at code[i]: just after a `;` outside
    brackets or the `}` closing its first brace (or at the `}` of the block
    around it, should that come first)."""
    depth = 0
    for m in BRACKETS.finditer(code, i):
        c = m.group()
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth < 0:
                return m.start()
            if depth == 0 and c == "}":
                return m.end()
        elif depth == 0:  # ';'
            return m.end()
    return len(code)


def signature_end(code, i):
    """Where the signature of a fn starting at code[i] ends: at the `{` of its
    body, or at the `;` of a declaration (`fn f(x: [u8; 4]);` in a trait)."""
    depth = 0
    for m in BRACKETS.finditer(code, i):
        depth += (m.group() in "([") - (m.group() in ")]")
        if depth == 0 and m.group() in "{;":
            return m.start()
    return len(code)


def drop_tests(code, path, test_files):
    """Blanks every item under #[cfg(test)]; a `#[cfg(test)] mod NAME;` makes
    NAME.rs, NAME/mod.rs and all of NAME/ test code. On a field, an arm or an
    expression only the attribute goes: its end is not worth guessing, and
    counting a test-only path is a loud mistake where missing a real one is not."""
    while m := CFG_TEST.search(code):
        e = close(code, m.end()) if ITEM.match(code, m.end()) else m.end()
        if d := MOD_DECL.match(code, m.end()):
            base = path.parent if path.name in ("mod.rs", "lib.rs", "main.rs") else path.with_suffix("")
            test_files.update({base / (d.group(1) + ".rs"), base / d.group(1)})
        code = code[: m.start()] + blank(code[m.start() : e]) + code[e:]
    return code


def group_names(code, i):
    """(name, position) of each top-level path in the braces opening at code[i]."""
    depth, start, out = 0, i + 1, []
    for m in GROUP.finditer(code, i):
        depth += {"{": 1, "}": -1, ",": 0}[m.group()]
        if depth == 0 or (depth == 1 and m.group() == ","):
            if n := re.match(r"\s*(\w+)", code[start : m.start()]):
                out.append((n.group(1), start + n.start(1)))
            start = m.end()
        if depth == 0:
            break
    return out


def line_of(code, pos):
    return code.count("\n", 0, pos) + 1


def load(root, problems):
    """{path: code} of the non-test code under src/, blanked; checks file lengths."""
    files, test_files = {}, set()
    for path in sorted((root / "src").rglob("*.rs")):
        rel, text = path.relative_to(root), path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_FILE_LINES:
            problems.append(f"long file: {rel} ({len(text.splitlines())} lines)")
        code = strip(text)
        if code.count("{") != code.count("}"):
            problems.append(f"unbalanced braces after blanking literals: {rel} (teach scripts/structure.py)")
            continue
        if path.name == "tests.rs" or path.name.endswith("_tests.rs") or "#![cfg(test)]" in code:
            test_files.add(path.with_suffix(""))  # and the files of its own `mod x;`
        else:
            files[path] = drop_tests(code, path, test_files)
    return {p: c for p, c in files.items() if not test_files.intersection([p, *p.parents])}


def check(root):
    src, problems = root / "src", []
    modules = [m.group(1) for m in re.finditer("^" + MOD_DECL.pattern, strip((src / "lib.rs").read_text()), re.M)]
    layer = {name: n for n, names in enumerate(LAYERS) for name in names}
    problems += [f"layer table: add {m} to LAYERS in scripts/structure.py" for m in modules if m not in layer]
    edges = defaultdict(list)  # (from, to) -> ["file:line", ...]
    for path, code in load(root, problems).items():
        rel, top = path.relative_to(root), path.relative_to(src).parts[0].removesuffix(".rs")
        if top not in modules:  # lib.rs, main.rs
            continue
        depth = len([p for p in rel.with_suffix("").parts[1:] if p != "mod"])  # super:: chains that reach the root
        for m in REF.finditer(code):
            if m.group(1) != "crate" and m.group(1).count("super") < depth:
                continue
            names = group_names(code, m.start(2)) if m.group(2) == "{" else [(m.group(2), m.start(2))]
            for name, pos in names:
                if name in modules and name != top:
                    edges[top, name].append(f"{rel}:{line_of(code, pos)}")
        if top in DATA_PATH:
            for m in FN.finditer(code):
                n = line_of(code, close(code, signature_end(code, m.end()))) - line_of(code, m.start()) + 1
                if n > MAX_FN_LINES:
                    problems.append(f"long fn: {rel}:{line_of(code, m.start())} {m.group(1)} ({n} lines)")
    for (a, b), where in sorted(edges.items()):
        if a in layer and b in layer and layer[a] < layer[b]:
            more = f" (and {len(where) - 1} more)" if len(where) > 1 else ""
            problems.append(f"upward: {a} (layer {layer[a]}) -> {b} (layer {layer[b]}) at {where[0]}{more}")
    return problems + cycles(edges), modules, edges


def cycles(edges):
    """The shortest cycle through each edge that is on one, each cycle once,
    with one reference per edge as evidence."""
    succ, seen, out = defaultdict(set), set(), []
    for a, b in edges:
        succ[a].add(b)
    for a, b in sorted(edges):
        prev, todo = {b: None}, deque([b])  # breadth-first from b back to a
        while todo and a not in prev:
            n = todo.popleft()
            for s in sorted(succ[n] - prev.keys()):
                prev[s] = n
                todo.append(s)
        if a not in prev:
            continue
        ring, n = [], a
        while n is not None:
            ring.append(n)
            n = prev[n]
        ring = ring[::-1]  # b ... a; the cycle is a -> b ... -> a
        start = ring.index(min(ring))
        ring = ring[start:] + ring[:start]  # the same cycle found from another edge prints the same
        if tuple(ring) not in seen:
            seen.add(tuple(ring))
            hops = list(zip(ring, ring[1:] + ring[:1]))
            proof = "; ".join(f"{x} -> {y} at {edges[x, y][0]}" for x, y in hops)
            out.append(f"cycle: {' -> '.join(ring + ring[:1])} ({proof})")
    return out


def main(argv):
    graph = "--graph" in argv
    args = [a for a in argv if a != "--graph"]
    root = Path(args[0]) if args else Path(__file__).resolve().parent.parent
    problems, modules, edges = check(root)
    if graph:
        for (a, b), where in sorted(edges.items()):
            print(f"{a} -> {b} ({len(where)})")
    for p in problems:
        print(p)
    print(f"structure: {len(modules)} modules, {len(edges)} edges, {len(problems)} violations")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
