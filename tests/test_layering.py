"""The floors declared in `samrt.layers`, checked against every import of the distribution
(imports inside functions included): no floor imports one it may not; a function-level import is
an optional dependency (or a samrt module that needs one at import) with its reason beside it;
the core and the client never reach torch."""

import ast
import importlib.util
import os
import subprocess
import sys
from typing import Dict, List, Set, Tuple

import pytest

from samrt.layers import FLOORS, MAY_IMPORT, OPTIONAL_DEPENDENCIES, floor_of

TORCH = ("torch", "torchvision", "segment_anything")
# SamPredictor's torch-facing API (`transform.apply_*_torch`, `predict_torch`, `get_image_embedding`)
# takes and returns tensors when torch is importable: these modules import torch inside those
# functions only. Their module level stays torch-free (checked below) and a client-only install works.
OPTIONAL_TORCH = {"samrt.client.transforms", "samrt.client.predictor"}
SKIPPED_DIRS = ("__pycache__", "assets", "results", "static")


def _folder(package: str) -> str:
    """The folder of `package` as installed (pyproject's package-dir maps samrt.export to export/, ...)."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, f"{package}: not an installed package"
    return list(spec.submodule_search_locations)[0]


def modules() -> Dict[str, str]:
    """{module name: path} for every .py file of the packages named in samrt.layers.FLOORS."""
    found = {}
    for package in FLOORS:
        base = _folder(package)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if d not in SKIPPED_DIRS
                           and os.path.isfile(os.path.join(dirpath, d, "__init__.py"))]
            for f in filenames:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, f), base)[:-3].replace(os.sep, ".")
                    found[package if rel == "__init__" else f"{package}.{rel.removesuffix('.__init__')}"] = \
                        os.path.join(dirpath, f)
    return found


ALL = modules()


def _names(node, name: str, path: str) -> Set[str]:
    """The absolute names one import statement of module `name` imports (a from-import also names
    `module.member`, which is a module when the member is a submodule)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names}
    if node.level:
        parts = name.split(".")
        base = parts if path.endswith("__init__.py") else parts[:-1]
        base = base[: len(base) - (node.level - 1)]
        mod = ".".join(base + ([node.module] if node.module else []))
    else:
        mod = node.module or ""
    return {mod} | {f"{mod}.{a.name}" for a in node.names}


def _walk_outside_functions(node):
    """Child nodes that run when `node` runs: not the bodies of functions defined in it."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        yield child
        yield from _walk_outside_functions(child)


def _parse(name: str) -> Tuple[ast.Module, List[ast.stmt], List[ast.stmt]]:
    """(tree, imports run at import time, imports run only when a function is called). Import
    time covers the module's own statements and the bodies of its functions called from them
    (`TRANSPORT_EXCEPTIONS = _transport_exceptions()`)."""
    tree = ast.parse(open(ALL[name]).read())
    functions = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    run, todo, seen = [], [tree], set()
    while todo:
        nodes = list(_walk_outside_functions(todo.pop()))
        run += nodes
        for n in nodes:
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in functions \
                    and n.func.id not in seen:
                seen.add(n.func.id)
                todo.append(functions[n.func.id])
    at_import = [n for n in run if isinstance(n, (ast.Import, ast.ImportFrom))]
    later = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and n not in at_import]
    return tree, at_import, later


def imports(name: str) -> Set[str]:
    """Every name module `name` imports, anywhere in the file."""
    _, at_import, later = _parse(name)
    return {i for node in at_import + later for i in _names(node, name, ALL[name])}


def _imported_at_import(name: str) -> Set[str]:
    """What importing `name` imports: its import-time imports and their parent packages."""
    _, at_import, _ = _parse(name)
    out = set()
    for node in at_import:
        for i in _names(node, name, ALL[name]):
            parts = i.split(".")
            out.update(".".join(parts[:k]) for k in range(1, len(parts) + 1))
    return out


def optional_needed(name: str) -> Set[str]:
    """The optional dependencies (samrt.layers.OPTIONAL_DEPENDENCIES) that importing `name` imports."""
    seen, todo, reached = set(), [name], set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        for i in _imported_at_import(m):
            if i in ALL:
                todo.append(i)
            elif i.split(".")[0] in OPTIONAL_DEPENDENCIES:
                reached.add(i.split(".")[0])
    return reached


def test_the_package_was_found():
    assert {"samrt.spec", "samrt.wire", "samrt.prompts", "samrt.layers", "samrt.scenes.generate",
            "samrt.export.onnx_export", "samrt.engines.runner", "samrt.model_repository.models.base",
            "samrt.model_repository.nginx", "samrt.client._client", "samrt.app.cli", "samrt.app.annotate.app",
            "samrt.benchmarks.run"} <= set(ALL)


def test_the_floors_are_declared_whole():
    floors = set(FLOORS.values())
    assert floors == set(MAY_IMPORT), (floors, set(MAY_IMPORT))
    for floor, allowed in MAY_IMPORT.items():
        assert floor in allowed and allowed <= floors, floor
    assert floor_of("samrt.spec") == "core" and floor_of("samrt.scenes.generate") == "scenes"
    assert floor_of("samrt.app.annotate.app") == "app" and floor_of("samrt.model_repository.models.click") == "server"
    with pytest.raises(KeyError, match="expected a name under one of"):
        floor_of("numpy")


@pytest.mark.parametrize("name", sorted(ALL))
def test_no_floor_imports_one_it_may_not(name):
    mine = floor_of(name)
    bad = sorted(f"{i} ({floor_of(i)})" for i in imports(name) if i in ALL and floor_of(i) not in MAY_IMPORT[mine])
    assert not bad, f"{name} ({mine}) imports {bad}; samrt.layers.MAY_IMPORT[{mine!r}] is {sorted(MAY_IMPORT[mine])}"


def _has_reason(node, lines: List[str], ok_ends: Set[int]) -> bool:
    """A comment on the import's lines, or directly under an import that has one (a group)."""
    return any("#" in lines[k - 1] for k in range(node.lineno, node.end_lineno + 1)) or node.lineno - 1 in ok_ends


@pytest.mark.parametrize("name", sorted(ALL))
def test_function_level_imports_are_optional_dependencies_with_a_reason(name):
    """Imports inside functions hide which floor uses which: they are kept only for what is not in
    every install (samrt.layers.OPTIONAL_DEPENDENCIES, or a samrt module that imports one of them
    when imported), each with its reason in a comment."""
    _, _, later = _parse(name)
    lines = open(ALL[name]).read().splitlines()
    hidden, unexplained, ok_ends = [], [], set()
    for node in sorted(later, key=lambda n: n.lineno):
        names = _names(node, name, ALL[name])
        ours = sorted(n for n in names if n in ALL)  # `from . import x`: the package and its module x
        module = ours[-1] if ours else min(names, key=len)
        optional = any(optional_needed(m) for m in ours) if ours else module.split(".")[0] in OPTIONAL_DEPENDENCIES
        if not optional:
            hidden.append(f"line {node.lineno}: {module}")
        elif _has_reason(node, lines, ok_ends):
            ok_ends.add(node.end_lineno)
        else:
            unexplained.append(f"line {node.lineno}: {module}")
    assert not hidden, f"{name}: imports inside functions of what every install has (move them to the top): {hidden}"
    assert not unexplained, f"{name}: optional imports inside functions without a reason comment: {unexplained}"


def _closure(start):
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo += [i for i in imports(m) if i in ALL]
    return seen


@pytest.mark.parametrize("name", sorted(n for n in ALL if floor_of(n) in ("core", "client")))
def test_core_and_client_never_reach_torch(name):
    reached = {i for m in _closure(name) if m not in OPTIONAL_TORCH for i in imports(m)}
    assert not [i for i in reached if i.split(".")[0] in TORCH], f"{name} reaches torch"


@pytest.mark.parametrize("name", sorted(OPTIONAL_TORCH))
def test_optional_torch_only_inside_functions(name):
    tree = ast.parse(open(ALL[name]).read())
    top = [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        top += [b for b in cls.body if not isinstance(b, (ast.FunctionDef, ast.AsyncFunctionDef))]
    reached = {i for n in ast.walk(ast.Module(body=top, type_ignores=[])) if isinstance(n, (ast.Import, ast.ImportFrom))
               for i in _names(n, name, ALL[name])}
    assert not [i for i in reached if i.split(".")[0] in TORCH], f"{name} imports torch at module level"


def test_client_and_launcher_import_without_torch():
    code = ("import sys; import samrt.client, samrt.wire, samrt.prompts, samrt.artifacts, samrt.app.pipeline, "
            "samrt.model_repository.server, samrt.model_repository.launch; "
            "bad = [m for m in ('torch', 'onnx', 'segment_anything') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
