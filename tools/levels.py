#!/usr/bin/env python3
"""The level check of src/: prints the graph of its top-level entries and
fails (exit 1) when an entry imports one of a higher level, when two entries
import each other, or when an entry has no level yet.

Reads `crate::x` and `velro_authz::x` paths (also grouped `use crate::{..}`)
outside comments, strings and `#[cfg(test)]` modules. Usage:
    python3 tools/levels.py [SRC_DIR]
"""

import os
import re
import sys
from collections import defaultdict

# Lowest first; entries on one line are one level.
LEVELS = [
    ["error.rs", "model", "proto.rs"],
    ["support"],
    ["store"],
    ["audit", "auth"],
    ["engine"],
    ["cache"],
    ["layers"],
    ["api", "loadgen"],
    ["app"],
    ["lib.rs", "main.rs", "bin"],
]
RANK = {entry: rank for rank, names in enumerate(LEVELS) for entry in names}

COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
STRING = re.compile(r'"(?:\\.|[^"\\])*"')
TESTS = re.compile(r"#\[cfg\(test\)\]\s*(?:pub\s+)?mod\s+\w+\s*(?:;|\{)")
ROOT = re.compile(r"(?<![\w:])(?:crate|velro_authz)::(\{|\w+)")


def strip_tests(text):
    """Drops `#[cfg(test)] mod x { ... }` bodies (brace-matched)."""
    out, i = [], 0
    for m in TESTS.finditer(text):
        if m.start() < i:
            continue
        out.append(text[i : m.start()])
        if text[m.end() - 1] == ";":
            i = m.end()
            continue
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def first_segments(text):
    """The top-level module names a file refers to."""
    for m in ROOT.finditer(text):
        if m.group(1) != "{":
            yield m.group(1)
            continue
        depth, j, item_start = 1, m.end(), True
        while j < len(text) and depth:
            c = text[j]
            if item_start and depth == 1 and (c.isalpha() or c == "_"):
                name = re.match(r"\w+", text[j:]).group(0)
                yield name
                j += len(name)
                item_start = False
                continue
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
            elif c == "," and depth == 1:
                item_start = True
            j += 1


def entry_of(name, entries):
    return name if name in entries else name + ".rs" if name + ".rs" in entries else None


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src")
    entries = set(os.listdir(src))
    edges = defaultdict(int)
    for top in sorted(entries):
        path = os.path.join(src, top)
        files = [path] if top.endswith(".rs") else [
            os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith(".rs")
        ]
        for file in files:
            text = open(file, encoding="utf-8").read()
            text = strip_tests(STRING.sub('""', COMMENT.sub("", text)))
            for name in first_segments(text):
                target = entry_of(name, entries)
                if target and target != top:
                    edges[(top, target)] += 1
    problems = [f"{e}: no level in tools/levels.py" for e in sorted(entries) if e not in RANK]
    for (a, b), n in sorted(edges.items(), key=lambda kv: (-RANK.get(kv[0][0], 0), kv[0])):
        mark = ""
        if RANK.get(a, -1) < RANK.get(b, -1):
            mark = "   <-- imports a higher level"
            problems.append(f"{a} -> {b}: imports a higher level")
        elif (b, a) in edges and a < b:
            problems.append(f"{a} <-> {b}: import each other")
        print(f"  {a:>9} -> {b:<9} {n:4}{mark}")
    print(f"{len(entries)} top-level entries in {os.path.normpath(src)}")
    for p in problems:
        print("FAIL:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
