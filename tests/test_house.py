"""The house stays as issue 31 left it: no import circles, modules of a readable size, benchmarks that are the
product's only, short results and README, and training that never imports serving (the model folder is the one
crossing, through `contract`)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("contract", "training", "serving", "benchmarks", "loadtest", "deploy")


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """module -> the project modules it imports (at any level, inside functions too)."""
    files = {_module(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                candidates = [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            modules = [c for c in candidates[1:] if c in files]  # `from package import module`: the module only
            found |= {c for c in (modules or candidates[:1]) if c in files and c != name}
        graph[name] = found
    return graph


def test_no_import_circles():
    graph, state, path = _imports(), {}, []

    def visit(m):
        state[m] = "open"
        path.append(m)
        for n in graph[m]:
            if state.get(n) == "open":
                raise AssertionError("import circle: " + " -> ".join(path[path.index(n) :] + [n]))
            if n not in state:
                visit(n)
        state[m] = "done"
        path.pop()

    for m in graph:
        if m not in state:
            visit(m)


def test_training_reaches_serving_only_through_the_model_folder():
    """...but for `python -m training evaluate`, which is serving's command (it scores the served data path)."""
    graph = _imports()
    assert not [
        (m, n)
        for m, deps in graph.items()
        if m.startswith("training")
        for n in deps
        if n.startswith("serving") and (m, n) != ("training.__main__", "serving.evaluate")
    ]
    assert not [
        (m, n) for m, deps in graph.items() if m.startswith("contract") for n in deps if not n.startswith("contract")
    ]


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_modules_benchmarks_and_pages_keep_their_size():
    big = {str(p.relative_to(ROOT)): _lines(p) for d in ("training", "serving") for p in (ROOT / d).rglob("*.py")}
    assert max(big.values()) <= 400, {k: v for k, v in big.items() if v > 400}
    assert sum(_lines(p) for p in (ROOT / "benchmarks").rglob("*.py")) < 1500
    assert _lines(ROOT / "benchmarks" / "results" / "README.md") <= 200
    assert _lines(ROOT / "README.md") <= 250


def test_no_function_over_60_lines():
    """Functions stay readable: none in training/, serving/ or contract/ longer than 60 lines (decorators and
    docstring included), counted by the parser."""
    import ast

    long = {}
    for d in ("training", "serving", "contract"):
        for path in (ROOT / d).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    first = min([node.lineno, *(x.lineno for x in node.decorator_list)])
                    if node.end_lineno - first + 1 > 60:
                        long[f"{path.relative_to(ROOT)}:{node.name}"] = node.end_lineno - first + 1
    assert not long, long
