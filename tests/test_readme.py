"""The README and the pages under docs/: their Python examples run as written, on the embedded model, and print what
their comments say; the README stays a short Space card; every relative link points to a file of the repository."""

import contextlib
import glob
import io
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
PAGES = [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
README_MAX_CHARS = 15_000
PRINT_WITH_EXPECTATION = re.compile(r"^print\(.*\)\s+#\s*(?P<expected>.+)$")
FENCE = re.compile(r"^```.*?^```[ \t]*$", flags=re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(?P<title>.+?)[ \t]*#*[ \t]*$", flags=re.M)


def read(path: str) -> str:
    return open(path, encoding="utf-8").read()


def rel(path: str) -> str:
    return os.path.relpath(path, ROOT).replace(os.sep, "/")


def python_blocks(path: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", read(path), flags=re.S)


def expectations(block: str) -> list[str]:
    """For each `print(...)  # comment` line: the comment up to its `...` (a prefix), or all of it (exact)."""
    out = []
    for line in block.splitlines():
        m = PRINT_WITH_EXPECTATION.match(line.strip())
        if m:
            out.append(m["expected"])
    return out


def prose(text: str) -> str:
    """The page without its code: fenced blocks and inline code spans removed."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(title: str) -> str:
    """GitHub's anchor for a heading: lower case, inline-code ticks and punctuation dropped, spaces to hyphens."""
    title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", title).replace(" ", "-")


def anchors(path: str) -> set[str]:
    seen, out = {}, set()
    for m in HEADING.finditer(FENCE.sub("", read(path))):
        base = slug(m["title"])
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


EXAMPLES = [(path, i, block) for path in PAGES for i, block in enumerate(python_blocks(path))]


def test_readme_has_python_examples():
    blocks = python_blocks(README)
    assert blocks and any(expectations(b) for b in blocks)


@pytest.mark.parametrize(
    "path, index, block", [pytest.param(p, i, b, id=f"{rel(p)}-block{i}") for p, i, b in EXAMPLES]
)
def test_example_runs_and_prints_what_it_says(path, index, block, monkeypatch):
    monkeypatch.chdir(ROOT)  # examples name files relative to the repository root
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(block, f"{rel(path)} python block {index}", "exec"), {"__name__": "readme"})
    printed = buf.getvalue().splitlines()
    wanted = expectations(block)
    assert len(printed) == len(wanted), printed
    for got, expected in zip(printed, wanted):
        if "..." in expected:
            assert got.startswith(expected.split("...")[0]), f"printed {got!r}, {rel(path)} says {expected!r}"
        else:
            assert got == expected, f"printed {got!r}, {rel(path)} says {expected!r}"


def test_readme_is_a_short_space_card():
    text = read(README)
    assert text.startswith("---\ntitle:"), "README.md must start with the Hugging Face Space front matter"
    assert "\n---\n" in text[4:], "the front matter must be closed by a line '---'"
    assert len(text) < README_MAX_CHARS, f"README.md has {len(text)} characters; keep it under {README_MAX_CHARS}"


def test_readme_keeps_the_setup_and_test_commands():
    blocks = re.findall(r"```bash\n(.*?)```", read(README), flags=re.S)
    assert "pip install -r requirements.txt\npython app.py\n" in blocks
    assert any("python -m pytest -q tests" in b.splitlines() for b in blocks)


@pytest.mark.parametrize("path", [pytest.param(p, id=rel(p)) for p in PAGES])
def test_relative_links_point_to_files_that_exist(path):
    broken = []
    for m in LINK.finditer(prose(read(path))):
        target = m["target"]
        if "://" in target or target.startswith("mailto:"):
            continue
        file_part, _, fragment = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        if not os.path.exists(dest):
            broken.append(f"{target} (no file {rel(dest)})")
        elif fragment and dest.endswith(".md") and fragment not in anchors(dest):
            broken.append(f"{target} (no heading #{fragment} in {rel(dest)})")
    assert not broken, f"{rel(path)}: broken links: {broken}"
