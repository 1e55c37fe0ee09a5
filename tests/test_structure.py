"""How the package hangs together, read from the source (AST): sub-packages that name what lives in them, in one order
that every import obeys (module and function level alike: a package imports only from packages below it), mlflow
imported only by the tracking package, no import cycle, and functions and classes short enough to read; plus the
stand-in tracker offering exactly the recording methods of the real one."""

import ast
from pathlib import Path

import mlabel_exp
from mlabel_exp.tracking import runs

PACKAGE = Path(mlabel_exp.__file__).parent
#: The packages bottom up (docs/architecture.md says what each holds): an import may only go to a lower rank or stay
#: in its own package. The leaves (rank 0) import nothing but each other.
RANK = {"errors": 0, "config": 0, "floats": 0, "fsutil": 0, "render": 1, "runtime": 2, "data": 3, "models": 4,
        "metrics": 5, "inference": 6, "training": 7, "tracking": 8, "diagnostics": 9, "comparison": 10,
        "experiment": 11, "cli": 12}
LEAVES = {name for name, rank in RANK.items() if rank == 0}
SUB_PACKAGES = set(RANK) - LEAVES
ENTRY_SHIMS = {"run", "predict", "compare", "search", "inspect", "synthetic", "diagnose", "export", "labels"}  # python -m mlabel_exp.<command>
MAX_FUNCTION_LINES, MAX_CLASS_LINES = 60, 200


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its __init__.py)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if "conf" in path.relative_to(PACKAGE).parts:
            continue
        parts = ["mlabel_exp", *path.relative_to(PACKAGE).with_suffix("").parts]
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imported(name: str, path: Path, node: ast.AST, modules: dict[str, Path]) -> set[str]:
    """The modules (ours or third-party top-level names) one import statement depends on."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names}
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    base = node.module or ""
    if node.level:
        base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
    return {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(our module -> our modules it imports, our module -> everything it imports), lazy imports included."""
    modules, ours, everything = _modules(), {}, {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps |= _imported(name, path, node, modules)
        everything[name] = deps
        ours[name] = {d for d in deps if d in modules and d != name}
    return ours, everything


def test_the_package_is_sub_packages_plus_a_few_shared_leaves_and_the_command_shims():
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert packages == SUB_PACKAGES
    assert top - ENTRY_SHIMS == LEAVES
    assert max(len(Path(m).relative_to(PACKAGE).parts) for m in _modules().values()) <= 3  # two levels at most


def _imports_of_our_modules():
    """(module file, line, importing package, imported package, imported module) of every import of ours, at any
    level (inside functions and TYPE_CHECKING blocks too)."""
    for name, path in _modules().items():
        here = name.split(".")[1] if name.count(".") else None
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mlabel_exp"):
                targets = [node.module] if node.module != "mlabel_exp" else [f"mlabel_exp.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("mlabel_exp.")]
            else:
                continue
            for target in targets:
                yield path.relative_to(PACKAGE.parent), node.lineno, here, target.split(".")[1], target


def test_every_import_goes_down_the_package_order():
    upward = [f"{path}:{line} ({here}) imports {target} ({there})"
              for path, line, here, there, target in _imports_of_our_modules()
              if here in RANK and there in RANK and here != there and RANK[there] > RANK[here]]
    assert upward == []


def test_no_cycle_between_packages():
    edges = {(here, there) for _, _, here, there, _ in _imports_of_our_modules()
             if here in RANK and there in RANK and here != there}
    assert {(a, b) for a, b in edges if (b, a) in edges} == set()


#: What an import inside a function may defer: libraries that take a noticeable share of a second to import.
HEAVY = {"torch", "torchvision", "torchmetrics", "mlflow", "pandas", "matplotlib", "scipy", "sklearn", "timm", "onnx",
         "onnxruntime", "onnxscript", "optuna", "pytorch_grad_cam", "hydra", "submitit", "PIL", "numpy", "iterstrat"}


def _heavy_at_import(modules: dict[str, Path]):
    """module -> the HEAVY libraries importing it loads (its module-level imports, and theirs, transitively)."""
    top = {}
    for name, path in modules.items():
        found = set()
        for node in ast.parse(path.read_text()).body:  # module level only (a TYPE_CHECKING block is an If: skipped)
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found |= _imported(name, path, node, modules)
        top[name] = found
    memo: dict[str, set[str]] = {}

    def heavy(name: str, trail: frozenset = frozenset()) -> set[str]:
        if name not in memo:
            out = set()
            for dep in top.get(name, ()):
                parts = dep.split(".")
                out |= {parts[0]} & HEAVY
                for i in range(2, len(parts) + 1):  # importing a.b.c imports the packages a.b and a.b.c
                    if ".".join(parts[:i]) in modules and ".".join(parts[:i]) not in trail | {name}:
                        out |= heavy(".".join(parts[:i]), trail | {name})
            memo[name] = out
        return memo[name]

    return heavy


def test_imports_inside_functions_are_only_those_that_defer_a_heavy_library():
    """A function-level import hides a dependency from the reader: it is there only to keep start-up (--help) fast,
    so it must defer a library that its module does not load anyway."""
    modules = _modules()
    heavy = _heavy_at_import(modules)
    pointless = []
    for name, path in modules.items():
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    ours = {d for d in _imported(name, path, node, modules) if d in modules}
                    pointless += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {d}" for d in sorted(ours)
                                  if not heavy(d) - heavy(name)]
    assert pointless == []


def test_docs_architecture_names_every_module_and_package():
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    listed = [path.relative_to(PACKAGE).as_posix() for path in _modules().values()
              if path.name != "__init__.py" and not (path.parent == PACKAGE and path.stem in ENTRY_SHIMS)]
    missing = [module for module in listed if f"`{module}`" not in page]
    assert missing == [] and all(f"{p}/" in page for p in SUB_PACKAGES)


def test_mlflow_is_imported_only_under_the_tracking_package():
    _, everything = _graph()
    importers = {m for m, deps in everything.items() if any(d == "mlflow" or d.startswith("mlflow.") for d in deps)}
    assert importers and all(m.startswith("mlabel_exp.tracking.") for m in importers), sorted(importers)


def test_the_trainer_knows_nothing_of_mlflow_hydra_or_the_commands():
    ours, everything = _graph()
    trainer = everything["mlabel_exp.training.trainer"]
    assert not {d for d in trainer if d.split(".")[0] in ("mlflow", "hydra", "omegaconf")}
    assert not {d for d in ours["mlabel_exp.training.trainer"] if d.startswith(("mlabel_exp.tracking", "mlabel_exp.cli"))}


def test_the_import_graph_has_no_cycle():
    graph, state, cycles = _graph()[0], {}, []

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


def test_each_entry_shim_only_hands_over_to_its_command():
    for name in ENTRY_SHIMS:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        imports = [n for n in tree.body if isinstance(n, ast.ImportFrom)]
        assert len(imports) == 1 and imports[0].module.startswith("mlabel_exp.cli."), name
        assert [a.name for a in imports[0].names] == ["main"], name


def test_no_function_over_60_lines_and_no_class_over_200():
    too_long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            limit = {ast.FunctionDef: MAX_FUNCTION_LINES, ast.AsyncFunctionDef: MAX_FUNCTION_LINES,
                     ast.ClassDef: MAX_CLASS_LINES}.get(type(node))
            if limit and node.end_lineno - node.lineno + 1 > limit:
                too_long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert too_long == []


def test_the_stand_in_tracker_has_every_recording_method_and_no_other():
    recording = {n for n in vars(runs.Tracker) if not n.startswith("_")}
    offered = {n for n in vars(runs.NullTracker) if not n.startswith("_") and n != "run_id"}
    assert offered == recording
    null = runs.NullTracker()
    assert null.log_metrics({"a": 1.0}, step=1) is None and null.run_id is None
    try:
        null.log_metric({"a": 1.0}, 1)  # a misspelt call fails, as on a real tracker
    except AttributeError:
        pass
    else:
        raise AssertionError("NullTracker accepted an unknown method")
