"""How the package hangs together: no import cycle, no library module importing a command, and the stand-in
tracker offering exactly the recording methods of the real one."""

import ast
from pathlib import Path

import mlabel_exp
from mlabel_exp import tracking

PACKAGE = Path(mlabel_exp.__file__).parent
COMMANDS = {"run", "search", "compare", "inspect", "predict", "pyfunc_model"}  # python -m ... entry points


def _imports() -> dict[str, set[str]]:
    """module -> the package modules it imports, at the top or inside functions (a lazy import is still a dependency)."""
    graph = {}
    for path in PACKAGE.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1:  # from .x import y / from . import x, y
                    found |= {node.module} if node.module else {a.name for a in node.names}
                elif (node.module or "").startswith("mlabel_exp"):
                    rest = node.module.split(".")[1:]
                    found |= {rest[0]} if rest else {a.name for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("mlabel_exp.")}
        graph[path.stem] = {m.split(".")[0] for m in found} - {path.stem}
    return graph


def test_the_import_graph_has_no_cycle():
    graph, state, cycles = _imports(), {}, []

    def visit(module, trail):
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(trail[trail.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, trail + [dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_no_library_module_imports_a_command():
    graph = _imports()
    assert COMMANDS <= set(graph)
    offending = {m: sorted(deps & COMMANDS) for m, deps in graph.items() if m not in COMMANDS and deps & COMMANDS}
    assert offending == {}


def test_the_stand_in_tracker_has_every_recording_method_and_no_other():
    recording = {n for n in vars(tracking.Tracker) if not n.startswith("_") and n != "find_resumable"}
    offered = {n for n in vars(tracking.NullTracker) if not n.startswith("_") and n != "run_id"}
    assert offered == recording
    null = tracking.NullTracker()
    assert null.log_metrics({"a": 1.0}, step=1) is None and null.run_id is None
    try:
        null.log_metric({"a": 1.0}, 1)  # a misspelt call fails, as on a real tracker
    except AttributeError:
        pass
    else:
        raise AssertionError("NullTracker accepted an unknown method")
