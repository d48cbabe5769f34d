"""The layout is a map of the architecture: imports run one way, app.py -> ui/ -> analysis/ -> fora/ -> embedded/
(benchmarks/ on top may use all of them), and no import cycle at any depth. Read from the source (absolute and
relative imports, at module level or inside functions), so a new file cannot slip past."""

import ast
import os

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


def imports_of(name: str, path: str, modules: dict[str, str]) -> set[str]:
    """The project modules `name` imports: `from a.b import c` is a.b.c when that is a module, else a.b."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" for a in node.names] + [module]  # the package's __init__ runs too
        else:
            continue
        for target in targets:  # every name: `from ui import form, store` imports both
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: str) -> dict[str, set[str]]:
    modules = project_modules(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


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


def test_imports_run_one_way():
    graph = import_graph(ROOT)
    upward = {m: sorted(t for t in targets if layer(t) > layer(m)) for m, targets in graph.items()}
    assert not {m: t for m, t in upward.items() if t}, "a module imports from a layer above it"


def test_no_import_cycle_at_any_depth():
    assert cycles(import_graph(ROOT)) == []


def test_the_layout_check_sees_cycles_through_relative_and_lazy_imports(tmp_path):
    """The check itself: a cycle made of a relative import and an import inside a function is found, and the same
    files without the cycle pass; an upward import is seen too."""
    pkg = tmp_path / "analysis" / "exp"
    pkg.mkdir(parents=True)
    (tmp_path / "analysis" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "experiment.py").write_text("from .report import write\n")
    (pkg / "cli.py").write_text("from analysis.exp import experiment, report\n")  # two names: both are read
    (pkg / "report.py").write_text("def write():\n    from analysis.exp import experiment\n")
    (tmp_path / "fora").mkdir()
    (tmp_path / "fora" / "__init__.py").write_text("from analysis.exp.report import write\n")
    graph = import_graph(str(tmp_path))
    assert graph["analysis.exp.experiment"] == {"analysis.exp.report"}
    assert graph["analysis.exp.cli"] == {"analysis.exp", "analysis.exp.experiment", "analysis.exp.report"}
    assert cycles(graph) == [["analysis.exp.experiment", "analysis.exp.report"]]
    assert layer("fora") < layer("analysis") and "analysis.exp.report" in graph["fora"]
    (pkg / "report.py").write_text("def write():\n    pass\n")
    assert cycles(import_graph(str(tmp_path))) == []


@pytest.mark.parametrize("top", ["fora", "analysis", "ui", "embedded"])
def test_each_layer_is_a_package(top):
    assert os.path.isfile(os.path.join(ROOT, top, "__init__.py"))
