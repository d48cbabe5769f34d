"""The layout is a map of the architecture: imports run one way, app.py -> ui/ -> analysis/ -> fora/ -> embedded/
(benchmarks/ on top may use all of them), and no import cycle. Read from the source, so a new file cannot slip past.

What counts as an import of module A by module B, as Python runs it:
- absolute and relative imports alike: `from . import x`, `from .sub import y`, `from ..metrics import z` are
  resolved against B's package (B itself when B is an `__init__.py`); one beyond the top-level package is an error;
- `import a.b.c` and `from a.b.c import n` import a.b.c and also run the packages a and a.b on the way, except
  B's own packages, which are already running when B runs (so `from . import sibling`, the usual idiom inside a
  package whose `__init__` imports its modules, is not a cycle: Python imports the sibling and binds it);
- every name of a `from` import counts: a name that is a module imports that module; any other name is read from
  the module the `from` names, which must have run that far, so it is an edge even to B's own package
  (`from . import Thing` while that `__init__` is still running is the partially-initialised-module error).

Cycles are checked twice. Imports at module level (including class bodies, `if` and `try` blocks, which run on
import) must form no cycle: such a cycle breaks or half-initialises modules depending on which one is imported
first. Imports inside functions must not close a cycle either: a lazy import that closes one postpones the cycle
rather than removing it, and the modules still cannot be understood or split apart one at a time; so the check over
all imports is the stricter rule the project keeps, a separate test so that its failure says when only a lazy
import closes the cycle. `if TYPE_CHECKING:` imports would count as module-level (none are used)."""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ["embedded", "fora", "analysis", "ui", "app", "benchmarks"]  # each may import only those before it


def project_modules(root: str) -> dict[str, str]:
    """Dotted module name -> file, for app.py and every .py under the layers' folders."""
    out = {}
    for top in LAYERS:
        if os.path.isfile(os.path.join(root, f"{top}.py")):
            out[top] = os.path.join(root, f"{top}.py")
        for folder, dirs, files in os.walk(os.path.join(root, top)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for f in files:
                if f.endswith(".py"):
                    parts = os.path.relpath(os.path.join(folder, f), root)[:-3].split(os.sep)
                    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
                    out[name] = os.path.join(folder, f)
    return out


def _ancestors(name: str) -> set[str]:
    """a.b.c -> {a, a.b}: the packages Python runs before a.b.c."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def _import_nodes(tree: ast.AST, lazy: bool):
    """The import statements of a module; with lazy=False only those that run on import (not inside a function)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        for child in ast.iter_child_nodes(node):
            if lazy or not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                todo.append(child)


def imports_of(name: str, path: str, modules: dict[str, str], lazy: bool = True) -> set[str]:
    """The project modules `name` imports (see the module docstring for what counts)."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    own = _ancestors(name) | {name}
    found = set()

    def module_of(dotted: str) -> str:  # the longest project module a dotted name lies in, or ""
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted

    def imported(target: str) -> None:  # target and the packages on its way, less those already running
        if target:
            found.update(m for m in _ancestors(target) | {target} if m in modules and m not in own)

    for node in _import_nodes(ast.parse(open(path, encoding="utf-8").read(), path), lazy):
        if isinstance(node, ast.Import):
            for alias in node.names:
                imported(module_of(alias.name))
            continue
        if node.level:
            parts = package.split(".") if package else []
            if node.level - 1 >= len(parts):
                raise ValueError(f"{path}:{node.lineno}: relative import beyond the top-level package")
            base = ".".join(parts[: len(parts) - (node.level - 1)])
            source = f"{base}.{node.module}" if node.module else base
        else:
            source = node.module
        imported(module_of(source))
        for alias in node.names:
            if f"{source}.{alias.name}" in modules:  # a submodule: Python imports it
                imported(f"{source}.{alias.name}")
            elif module_of(source) and module_of(source) != name:  # a name read from a module, maybe mid-import
                found.add(module_of(source))
    return found


def import_graph(root: str, lazy: bool = True) -> dict[str, set[str]]:
    modules = project_modules(root)
    return {name: imports_of(name, path, modules, lazy) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def upward(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """Module -> the modules of a higher layer it imports, for those that import any."""
    found = {m: sorted(t for t in targets if layer(t) > layer(m)) for m, targets in graph.items()}
    return {m: t for m, t in found.items() if t}


def test_imports_run_one_way():
    assert upward(import_graph(ROOT)) == {}, "a module imports from a layer above it"


def test_no_import_cycle_at_module_level():
    assert cycles(import_graph(ROOT, lazy=False)) == [], "modules that import each other on import"


def test_no_import_cycle_through_imports_inside_functions():
    assert cycles(import_graph(ROOT)) == [], "a cycle closed only by an import inside a function"


def _write(root, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def _imports_cleanly(root, module: str) -> bool:
    done = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=root, capture_output=True, text=True)
    return done.returncode == 0


LAYOUT = {  # a small analysis/ with every kind of relative import, no cycle at module level and one lazy one
    "analysis/__init__.py": "",
    "analysis/metrics/__init__.py": "",
    "analysis/metrics/quality.py": "def psnr():\n    pass\n",
    "analysis/exp/__init__.py": "from .experiment import run\n",  # relative, from a package's __init__
    "analysis/exp/experiment.py": "from . import report\nfrom ..metrics import quality\n"
    "from ..metrics.quality import psnr\n\n\ndef run():\n    pass\n",
    "analysis/exp/report.py": "def write():\n    from .experiment import run\n",  # lazy: closes a cycle at call time
    "analysis/exp/cli.py": "from analysis.exp import experiment, report\nfrom analysis.exp import run\n",
    "fora/__init__.py": "",
}


def test_the_layout_check_resolves_relative_imports(tmp_path):
    _write(tmp_path, LAYOUT)
    graph = import_graph(str(tmp_path))
    # `from . import report` and `from ..metrics import quality` / `from ..metrics.quality import psnr`: the sibling,
    # and the other package with its module; the running packages analysis and analysis.exp are not edges
    assert graph["analysis.exp.experiment"] == {"analysis.exp.report", "analysis.metrics", "analysis.metrics.quality"}
    assert graph["analysis.exp"] == {"analysis.exp.experiment"}  # `from .experiment import run` in an __init__
    # two module names, and a name (run) read from the package's __init__: that imports the package
    assert graph["analysis.exp.cli"] == {"analysis.exp", "analysis.exp.experiment", "analysis.exp.report"}
    assert import_graph(str(tmp_path), lazy=False)["analysis.exp.report"] == set()
    assert graph["analysis.exp.report"] == {"analysis.exp.experiment"}
    _write(tmp_path, {"analysis/exp/report.py": "from ... import x\n"})
    with pytest.raises(ValueError, match="report.py:1: relative import beyond the top-level package"):
        import_graph(str(tmp_path))


def test_the_layout_check_sees_cycles_as_python_runs_them(tmp_path):
    """A cycle is reported where Python's import breaks, and not where the same idiom works: checked against a
    real `import` of the small layout."""
    _write(tmp_path, LAYOUT)
    assert cycles(import_graph(str(tmp_path), lazy=False)) == []  # `from . import report` under an __init__: fine
    assert _imports_cleanly(tmp_path, "analysis.exp") and _imports_cleanly(tmp_path, "analysis.exp.report")
    assert cycles(import_graph(str(tmp_path))) == [["analysis.exp.experiment", "analysis.exp.report"]]  # the lazy one

    # the same import at module level, relative: a cycle, and Python fails on it when report is imported first
    _write(tmp_path, {"analysis/exp/report.py": "from .experiment import run\n"})
    assert cycles(import_graph(str(tmp_path), lazy=False)) == [["analysis.exp.experiment", "analysis.exp.report"]]
    assert not _imports_cleanly(tmp_path, "analysis.exp.report")

    # a name read from the package's own __init__ while it runs: the package is part of the cycle
    _write(tmp_path, {"analysis/exp/report.py": "from . import run\n"})
    assert cycles(import_graph(str(tmp_path), lazy=False)) == [
        ["analysis.exp", "analysis.exp.experiment", "analysis.exp.report"]
    ]
    assert not _imports_cleanly(tmp_path, "analysis.exp")

    # two levels up, through another package: metrics.quality -> exp (its __init__) -> experiment -> metrics.quality
    _write(tmp_path, {"analysis/exp/report.py": "", "analysis/metrics/quality.py": "from ..exp import run\n"})
    assert cycles(import_graph(str(tmp_path), lazy=False)) == [
        ["analysis.exp", "analysis.exp.experiment", "analysis.metrics.quality"]
    ]
    assert not _imports_cleanly(tmp_path, "analysis.exp")


def test_the_layout_check_sees_an_upward_import(tmp_path):
    _write(tmp_path, {**LAYOUT, "fora/__init__.py": "from analysis.exp.report import write\n"})
    assert upward(import_graph(str(tmp_path))) == {"fora": ["analysis", "analysis.exp", "analysis.exp.report"]}
    _write(tmp_path, {"fora/__init__.py": "def f():\n    from analysis.metrics import quality\n"})  # lazy counts too
    assert upward(import_graph(str(tmp_path))) == {
        "fora": ["analysis", "analysis.metrics", "analysis.metrics.quality"]
    }


@pytest.mark.parametrize("top", ["fora", "analysis", "ui", "embedded"])
def test_each_layer_is_a_package(top):
    assert os.path.isfile(os.path.join(ROOT, top, "__init__.py"))
