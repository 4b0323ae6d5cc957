"""The package's layers, read from every import (including imports inside functions):
core <- export <- engines <- model_repository; client depends on core only; the apps (cli,
demo, pipeline, benchmarks, ...) on anything. The core and the client never import torch."""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
PACKAGE_DIRS = {"samrt": "samrt", "samrt.export": "export", "samrt.engines": "engines",
                "samrt.model_repository": "model_repository", "samrt.client": "client",
                "samrt.benchmarks": "benchmarks"}
APPS = {"samrt.cli", "samrt.demo", "samrt.pipeline", "samrt.annotate", "samrt.dataset_amg", "samrt.benchmarks"}
# layer -> the layers it may import
ALLOWED = {
    "core": {"core"},
    "export": {"core", "export"},
    "engines": {"core", "export", "engines"},
    "model_repository": {"core", "engines", "model_repository"},
    "client": {"core", "client"},
    "app": {"core", "export", "engines", "model_repository", "client", "app"},
}
TORCH = ("torch", "torchvision", "segment_anything")
# SamPredictor's torch-facing API (`transform.apply_*_torch`, `predict_torch`, `get_image_embedding`)
# takes and returns tensors when torch is importable: these modules import torch inside those
# functions only. Their module level stays torch-free (checked below) and a client-only install works.
OPTIONAL_TORCH = {"samrt.client.transforms", "samrt.client.predictor"}


def layer(module: str) -> str:
    if any(module == a or module.startswith(a + ".") for a in APPS):
        return "app"
    for prefix in ("samrt.export", "samrt.engines", "samrt.model_repository", "samrt.client"):
        if module == prefix or module.startswith(prefix + "."):
            return prefix.split(".")[1]
    return "core"


def modules():
    """{module name: path} for every .py file of the distribution."""
    found = {}
    for pkg, folder in PACKAGE_DIRS.items():
        base = os.path.join(ROOT, folder)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if d not in ("__pycache__", "assets", "results", "static")]
            if pkg == "samrt" and os.path.abspath(dirpath) != os.path.abspath(base) and not os.path.isfile(
                    os.path.join(dirpath, "__init__.py")):
                continue
            for f in filenames:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, f), base)[:-3].replace(os.sep, ".")
                    name = pkg if rel == "__init__" else f"{pkg}.{rel.removesuffix('.__init__')}"
                    found[name] = os.path.join(dirpath, f)
    return found


def imports(name: str, path: str):
    """Every module `path` imports, anywhere in the file, as absolute names."""
    return _imports_of_tree(name, path, ast.parse(open(path).read()))


ALL = modules()


def test_the_package_was_found():
    assert {"samrt.spec", "samrt.wire", "samrt.prompts", "samrt.export.onnx_export", "samrt.engines.runner",
            "samrt.model_repository.python_models", "samrt.client._client", "samrt.cli"} <= set(ALL)


@pytest.mark.parametrize("name", sorted(ALL))
def test_no_lower_layer_imports_a_higher_one(name):
    mine = layer(name)
    bad = []
    for imported in imports(name, ALL[name]):
        if imported.split(".")[0] != "samrt" or imported not in ALL:
            continue
        if layer(imported) not in ALLOWED[mine]:
            bad.append(f"{imported} ({layer(imported)})")
    assert not bad, f"{name} ({mine}) imports {bad}"


def _imports_of_tree(name: str, path: str, tree) -> set:
    is_pkg = path.endswith("__init__.py")
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = name.split(".")
                base = parts if is_pkg else parts[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def _closure(start):
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo += [i for i in imports(m, ALL[m]) if i in ALL]
    return seen


@pytest.mark.parametrize("name", sorted(n for n in ALL if layer(n) in ("core", "client")))
def test_core_and_client_never_reach_torch(name):
    reached = {i for m in _closure(name) if m not in OPTIONAL_TORCH for i in imports(m, ALL[m])}
    assert not [i for i in reached if i.split(".")[0] in TORCH], f"{name} reaches torch"


@pytest.mark.parametrize("name", sorted(OPTIONAL_TORCH))
def test_optional_torch_only_inside_functions(name):
    tree = ast.parse(open(ALL[name]).read())
    top = [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        top += [b for b in cls.body if not isinstance(b, (ast.FunctionDef, ast.AsyncFunctionDef))]
    reached = _imports_of_tree(name, ALL[name], ast.Module(body=top, type_ignores=[]))
    assert not [i for i in reached if i.split(".")[0] in TORCH], f"{name} imports torch at module level"


def test_client_and_launcher_import_without_torch():
    code = ("import sys; import samrt.client, samrt.wire, samrt.prompts, samrt.artifacts, samrt.pipeline, "
            "samrt.model_repository.server, samrt.model_repository.launch; "
            "bad = [m for m in ('torch', 'onnx', 'segment_anything') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
