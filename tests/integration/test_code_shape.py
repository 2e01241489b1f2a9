#!/usr/bin/env python3
"""The daemon's shape (issue 17): its modules form layers, so that a reader can start at
the leaves.

  - the include graph of daemon/ has no cycle;
  - the call graph between daemon modules has no cycle (from the symbols each object file
    defines and uses: `nm` over build/daemon/*.o);
  - daemon/DESIGN.md's module table lists exactly the .c files of daemon/;
  - no daemon function is longer than CODE_SHAPE_FUNCTION_MAX lines, and no daemon file
    longer than CODE_SHAPE_FILE_MAX lines unless its first comment says why
    ("Longer than ... because").
"""
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cdcdd_testlib import ROOT, check, finish  # noqa: E402

CODE_SHAPE_FUNCTION_MAX = 80
CODE_SHAPE_FILE_MAX = 700
DAEMON = os.path.join(ROOT, "daemon")


def find_cycle(graph):
    """A cycle in graph {node: set(nodes)} as a list of nodes, or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = {n: WHITE for n in graph}
    stack = []

    def visit(n):
        color[n] = GREY
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if color.get(m, WHITE) == GREY:
                return stack[stack.index(m):] + [m]
            if color.get(m, WHITE) == WHITE:
                c = visit(m)
                if c:
                    return c
        stack.pop()
        color[n] = BLACK
        return None

    for n in sorted(graph):
        if color[n] == WHITE:
            c = visit(n)
            if c:
                return c
    return None


def module(path):
    return os.path.splitext(os.path.basename(path))[0]


def include_graph():
    g = {}
    names = {f for f in os.listdir(DAEMON) if f.endswith((".c", ".h"))}
    for f in names:
        src = open(os.path.join(DAEMON, f)).read()
        me = module(f)
        for inc in re.findall(r'^#include "([a-z_0-9]+\.h)"', src, re.M):
            if inc in names and module(inc) != me:
                g.setdefault(me, set()).add(module(inc))
        g.setdefault(me, set())
    return g


def call_graph():
    objs = [os.path.join(ROOT, "build", "daemon", f[:-2] + ".o") for f in os.listdir(DAEMON) if f.endswith(".c")]
    defined, used = {}, {}
    for o in objs:
        if not os.path.exists(o):
            raise AssertionError(f"{o} is not built (run make first)")
        out = subprocess.run(["nm", o], capture_output=True, text=True, check=True).stdout
        m = module(o)
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] in "TDRB":
                defined[parts[2]] = m
            elif len(parts) == 2 and parts[0] == "U":
                used.setdefault(m, set()).add(parts[1])
    g = {module(o): set() for o in objs}
    for m, syms in used.items():
        for s in syms:
            if s in defined and defined[s] != m:
                g[m].add(defined[s])
    return g


def strip_literals(src):
    src = re.sub(r"'(\\.|[^'\\])'", "''", src)
    src = re.sub(r'"(\\.|[^"\\])*"', '""', src)
    return src


def function_lengths(path):
    """(name, lines, first line) of every function defined in a C file."""
    lines = strip_literals(open(path).read()).split("\n")
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        head = re.match(r"^[A-Za-z_][^;=#]*\(", line) and not line.startswith(("typedef", "struct ", "enum "))
        if head:
            k = i
            while k < len(lines) and ";" not in lines[k] and not re.search(r"\)\s*(__attribute__.*)?\{\s*$", lines[k]):
                k += 1
            if k < len(lines) and re.search(r"\)\s*\{\s*$", lines[k]):
                depth, j = 0, k
                while j < len(lines):
                    depth += lines[j].count("{") - lines[j].count("}")
                    if depth == 0:
                        break
                    j += 1
                name = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(", line)
                out.append((name[0] if name else "?", j - i + 1, i + 1))
                i = j + 1
                continue
        i += 1
    return out


def main():
    def no_include_cycle():
        c = find_cycle(include_graph())
        assert c is None, "include cycle: " + " -> ".join(c)

    def no_call_cycle():
        c = find_cycle(call_graph())
        assert c is None, "call cycle between modules: " + " -> ".join(c)

    def design_lists_modules():
        design = open(os.path.join(DAEMON, "DESIGN.md")).read()
        listed = set(re.findall(r"^\| *`([a-z_0-9]+)\.c` *\|", design, re.M))
        files = {f[:-2] for f in os.listdir(DAEMON) if f.endswith(".c")}
        assert listed == files, f"DESIGN.md lists {sorted(listed - files)} that do not exist and misses {sorted(files - listed)}"

    def short_functions():
        long = []
        for f in sorted(os.listdir(DAEMON)):
            if f.endswith(".c"):
                for name, n, line in function_lengths(os.path.join(DAEMON, f)):
                    if n > CODE_SHAPE_FUNCTION_MAX:
                        long.append(f"daemon/{f}:{line} {name} ({n} lines)")
        assert not long, f"functions over {CODE_SHAPE_FUNCTION_MAX} lines: {long}"

    def short_files():
        long = []
        for f in sorted(os.listdir(DAEMON)):
            if f.endswith((".c", ".h")):
                src = open(os.path.join(DAEMON, f)).read()
                first_comment = src[:src.find("*/")] if "/*" in src[:200] else ""
                if src.count("\n") > CODE_SHAPE_FILE_MAX and not re.search(r"Longer than \d+ lines because", first_comment):
                    long.append(f"daemon/{f} ({src.count(chr(10))} lines)")
        assert not long, f"files over {CODE_SHAPE_FILE_MAX} lines without a reason at the top: {long}"

    check("daemon_include_graph_has_no_cycle", no_include_cycle)
    check("daemon_call_graph_has_no_cycle", no_call_cycle)
    check("daemon_design_lists_every_module", design_lists_modules)
    check("daemon_functions_at_most_80_lines", short_functions)
    check("daemon_files_at_most_700_lines", short_files)
    finish()


if __name__ == "__main__":
    main()
