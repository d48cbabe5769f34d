"""Imports run one way: app.py -> analysis/ -> fora/. Checked on the source, so a new file cannot slip past."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def imported_packages(path: str) -> set[str]:
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def sources(package: str) -> list[str]:
    out = []
    for folder, _, files in os.walk(os.path.join(ROOT, package)):
        out += [os.path.join(folder, f) for f in files if f.endswith(".py")]
    return sorted(out)


@pytest.mark.parametrize(
    "package, forbidden", [("fora", {"analysis", "app", "benchmarks"}), ("analysis", {"app", "benchmarks"})]
)
def test_imports_run_one_way(package, forbidden):
    bad = {os.path.relpath(p, ROOT): sorted(imported_packages(p) & forbidden) for p in sources(package)}
    assert not {p: b for p, b in bad.items() if b}
