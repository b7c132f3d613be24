"""The package's shape: no import cycles (imports inside functions included), one place for the decision."""

import ast
from pathlib import Path

import pneumo_edge

PACKAGE = Path(pneumo_edge.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every pneumo_edge module this file imports, at any depth of the file (functions included)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pneumo_edge")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if not base.startswith("pneumo_edge"):
                continue
            for a in node.names:  # `from . import x` may name a module
                found.add(f"{base}.{a.name}" if (PACKAGE.parent / f"{base}.{a.name}".replace(".", "/")).with_suffix(
                    ".py").exists() else base)
    return found - {name}


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: {i for i in _imports(p) if i in modules} for m, p in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_counting_imports_inside_functions():
    graph = import_graph()
    assert "pneumo_edge.edge.decision" in graph["pneumo_edge.edge.infer"]  # the scan sees real edges
    assert cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_threshold_and_rejection_are_decided_in_one_place():
    """Outside edge/decision.py no code compares a value with a threshold or writes the rejected label
    (a chained range check of a stored setting, lo < x <= hi, is validation, not a decision)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(PACKAGE)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Constant) and node.value == "REJECTED_OOD" and path.name != "decision.py":
                offenders.append(where)
            if (isinstance(node, ast.Compare) and len(node.ops) == 1 and "thr" in ast.unparse(node).lower()
                    and isinstance(node.ops[0], (ast.GtE, ast.Gt, ast.Lt, ast.LtE)) and path.name != "decision.py"):
                offenders.append(f"{where} {ast.unparse(node)}")
    assert offenders == []


def test_run_control_never_reaches_a_published_config(tiny_bundle):
    import dataclasses
    import json

    from pneumo_edge.train.checkpoint import RUN_KEYS
    from pneumo_edge.train.fit import RunConfig, TrainConfig

    assert set(RUN_KEYS) == {f.name for f in dataclasses.fields(RunConfig)}
    assert not set(RUN_KEYS) & {f.name for f in dataclasses.fields(TrainConfig)}
    for bundle in (tiny_bundle, PACKAGE.parent / "export"):
        published = json.loads((bundle / "config.json").read_text())["train_config"]
        assert not set(RUN_KEYS) & set(published), bundle


def test_no_function_over_80_lines_and_no_command_file_over_300():
    long = []
    for p in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{p.relative_to(PACKAGE)}:{node.lineno} {node.name}")
    assert long == []
    assert {p.name: n for p in (PACKAGE / "cli").glob("*.py") if (n := len(p.read_text().splitlines())) > 300} == {}
