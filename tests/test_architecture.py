"""The shape the README promises, checked: no import cycle anywhere in the project (imports inside functions
count: a cycle hidden in a function is still one), `trainables/` never imports `sweep/`, the trial/driver
contract imports nothing of ours, `tune/` never imports `report/`, every key of an MLflow run's record is the
contract's name, and the README's map names every module there is."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("sweep", "trainables", "bench")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the project's modules it imports (a package's __init__ counts as the package)."""
    known = modules()
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, *([node.module] if node.module else [])])
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            for target in targets:
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):  # not its own package
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_trainables_never_import_sweep():
    graph = import_graph()
    assert not {(m, t) for m, ts in graph.items() for t in ts if m.startswith("trainables") and t.startswith("sweep")}


def test_tune_never_imports_report():
    """The runner ends when Tune's run ends; reading its outcome back is the report's (sweep/report/outcome.py),
    and what adaptive seeds need of the statistics is in sweep/results/."""
    graph = import_graph()
    assert not {(m, t) for m, ts in graph.items() for t in ts
                if m.startswith("sweep.tune") and t.startswith("sweep.report")}


def test_references_are_data_and_import_nothing_of_ours():
    """sweep/references/ holds published studies and their loader; probing our models for them is sweep/plan's."""
    graph = import_graph()
    assert not {(m, t) for m, ts in graph.items() for t in ts if m.startswith("sweep.references")}


def test_no_runtime_module_imports_the_tests():
    """What sweep/, trainables/ and bench/ need of a helper the tests share lives there, not in tests/."""
    found = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{name} imports {t}" for t in targets if t == "tests" or t.startswith("tests.")]
    assert not found, found


def test_the_contract_imports_nothing_of_ours():
    assert import_graph()["trainables.contract"] == set()


def test_no_run_record_key_is_written_as_a_string_outside_the_contract():
    """A run-record key (trainables.contract.RUN_RECORD_KEYS) written as a literal outside the contract is a second
    spelling the writer and the reader no longer share."""
    from trainables.contract import RUN_RECORD_KEYS

    keys = set(RUN_RECORD_KEYS)
    found = []
    for name, path in modules().items():
        if name == "trainables.contract" or not name.startswith(("sweep", "trainables")):
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                      and node.body and isinstance(node.body[0], ast.Expr)}
        found += [f"{name}:{node.lineno} {node.value!r}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and node.value in keys and id(node) not in docstrings]
    assert not found, f"run-record keys written as literals (use trainables.contract's names): {found}"


RUN_DATA = {"tags", "params", "metrics"}  # an MLflow run's run.data.<these>


def mlflow_keys(tree: ast.AST) -> list[ast.expr]:
    """The expressions naming a key where a run's record is read (run.data.tags[KEY], run.data.params.get(KEY))
    or written (RunTag(KEY, ...), Metric(KEY, ...), Param(KEY, ...), client.set_tag(run_id, KEY, ...),
    client.log_param / log_metric alike)."""
    def run_data(node: ast.expr) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr in RUN_DATA and isinstance(node.value, ast.Attribute)
                and node.value.attr == "data")

    keys = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and run_data(node.value):
            keys.append(node.slice)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if (name == "get" and isinstance(func, ast.Attribute) and run_data(func.value)) or name in (
                    "RunTag", "Metric", "Param"):
                keys.append(node.args[0])
            elif name in ("set_tag", "log_param", "log_metric") and isinstance(func, ast.Attribute):
                keys.append(node.args[1] if len(node.args) >= 3 else node.args[0])  # client's (run_id, key, value)
    return keys


def test_mlflow_keys_are_read_and_written_by_the_contracts_names():
    """Where sweep/ or trainables/ read a key of a run's record or write one, the key is a name (the contract's),
    never a literal: the cell runs' plain tags (`learned`, `search`, ...) are covered as the dotted keys are."""
    found = []
    for name, path in modules().items():
        if not name.startswith(("sweep", "trainables")):
            continue
        found += [f"{name}:{key.lineno} {key.value!r}" for key in mlflow_keys(ast.parse(path.read_text()))
                  if isinstance(key, ast.Constant) and isinstance(key.value, str)]
    assert not found, f"MLflow keys written as literals (name them in trainables/contract.py): {found}"


def test_the_mlflow_key_finder_finds_reads_and_writes():
    code = """
run.data.tags["a"]; run.data.params.get("b", ""); client.set_tag(run_id, "c", "v"); RunTag("d", "v")
cell.tags.get("not a run's"); frame["learned"]; client.set_tag(run_id, NAMED, "v")
"""
    keys = mlflow_keys(ast.parse(code))
    assert sorted(k.value for k in keys if isinstance(k, ast.Constant)) == ["a", "b", "c", "d"]
    assert [k.id for k in keys if isinstance(k, ast.Name)] == ["NAMED"]


def readme_map() -> str:
    text = (REPO / "README.md").read_text()
    return text[text.index("## How it is built"):text.index("## Tests")]


@pytest.mark.parametrize("package", ["sweep", "trainables"])
def test_the_readme_map_names_every_module(package):
    named = set(re.findall(r"[\w]+\.py", readme_map())) | set(re.findall(r"^\s+(\w+)/", readme_map(), re.M))
    root = REPO / package
    missing = []
    for path in root.rglob("*.py"):
        relative = path.relative_to(root)
        if path.name == "__init__.py" or (package == "trainables" and len(relative.parts) > 1):
            continue  # packages are named by folder; trainables' registries (methods/, data/) by their folder
        if (len(relative.parts) > 1 and relative.parts[0] not in named) or (path.name not in named and path.name != "__main__.py" and relative.parts[0] != "references"):
            missing.append(str(relative))
    assert not missing, f"the README's map does not name {missing}"
