"""The README's Python examples run as written, on the embedded model, and print what their comments say."""

import contextlib
import io
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRINT_WITH_EXPECTATION = re.compile(r"^print\(.*\)\s+#\s*(?P<expected>.+)$")


def python_blocks(path: str) -> list[str]:
    text = open(path, encoding="utf-8").read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def expectations(block: str) -> list[str]:
    """For each `print(...)  # comment` line: the comment up to its `...` (a prefix), or all of it (exact)."""
    out = []
    for line in block.splitlines():
        m = PRINT_WITH_EXPECTATION.match(line.strip())
        if m:
            out.append(m["expected"])
    return out


BLOCKS = python_blocks(os.path.join(ROOT, "README.md"))


def test_readme_has_python_examples():
    assert BLOCKS and any(expectations(b) for b in BLOCKS)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs_and_prints_what_it_says(index):
    block = BLOCKS[index]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(block, f"README.md python block {index}", "exec"), {"__name__": "readme"})
    printed = buf.getvalue().splitlines()
    wanted = expectations(block)
    assert len(printed) == len(wanted), printed
    for got, expected in zip(printed, wanted):
        if "..." in expected:
            assert got.startswith(expected.split("...")[0]), f"printed {got!r}, README says {expected!r}"
        else:
            assert got == expected, f"printed {got!r}, README says {expected!r}"
