"""dvc.yaml names every source file a stage's process loads, and every params group it reads.

Each stage's import closure is computed from the code (ast: every import statement, those
inside functions included, plus the packages' __init__ files Python runs on the way), so a new
import shows up here without any hand-kept list. A dep that is a folder covers its files.
Run as a script to print each stage's closure and params:  python tests/test_dvc_deps.py
"""

from __future__ import annotations

import ast
import re
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from support import ROOT, SOURCE_ROOTS, imported_modules, module_file

PARAMS_ANNOTATION = "Params"  # stage functions take the whole params as `params: Params`


def closure(module: str) -> set[Path]:
    """Files Python loads for `python -m module`: the module, its imports, recursively, with
    every enclosing package's __init__.py."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            path = module_file(".".join(parts[:i]))
            if path is not None and path not in seen:
                seen.add(path)
                todo.extend(imported_modules(path))
    return seen


def load_stages() -> dict[str, dict]:
    """stage name -> its definition (the `do` of a foreach stage) from dvc.yaml."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def stage_module(stage: dict) -> str:
    match = re.match(r"python -m (stages\.\w+)", stage["cmd"])
    assert match, f"stage command {stage['cmd']!r} is not `python -m stages.<name>`"
    return match.group(1)


def declared_deps(stage: dict) -> list[Path]:
    deps = [d for d in stage.get("deps", []) if "${" not in d or d.startswith("src/") or d.startswith("stages/")]
    return [ROOT / d for d in deps if "${" not in d]


def missing_deps(stage: dict) -> list[str]:
    """Source files of the stage's closure that no dep covers, relative to the project."""
    deps = declared_deps(stage)
    files = closure(stage_module(stage))
    uncovered = [f for f in files if not any(f == d or d in f.parents for d in deps)]
    return sorted(str(f.relative_to(ROOT)) for f in uncovered)


# --- params: which groups a stage reads --------------------------------------------------

PARAMS_FILE = ROOT / "src" / "salis" / "params.py"  # validates every group: a check, not a use


@cache
def _params_class() -> ast.ClassDef:
    tree = ast.parse(PARAMS_FILE.read_text())
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == PARAMS_ANNOTATION)


def _params_groups() -> set[str]:
    """Fields of Params that are groups of their own (typed by a *Params dataclass)."""
    return {
        n.target.id for n in _params_class().body
        if isinstance(n, ast.AnnAssign) and ast.unparse(n.annotation).endswith("Params")
    }


def _params_properties() -> dict[str, set[str]]:
    """Params properties (e.g. num_cycles) -> the fields they read (e.g. cycles)."""
    out: dict[str, set[str]] = {}
    for cls in [_params_class()]:
        for fn in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
            if any(isinstance(d, ast.Name) and d.id == "property" for d in fn.decorator_list):
                out[fn.name] = {
                    a.attr for a in ast.walk(fn)
                    if isinstance(a, ast.Attribute) and isinstance(a.value, ast.Name) and a.value.id == "self"
                }
    return out


def _attribute_chain(node: ast.Attribute) -> list[str] | None:
    chain = []
    while isinstance(node, ast.Attribute):
        chain.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(chain)]


def params_read(path: Path) -> set[str]:
    """Keys (`group` or `group.key`) read through an argument annotated `Params` in `path`."""
    properties, groups = _params_properties(), _params_groups()
    keys: set[str] = set()
    for fn in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        names = {
            a.arg for a in [*fn.args.args, *fn.args.kwonlyargs]
            if a.annotation is not None and ast.unparse(a.annotation).strip("'\"") == PARAMS_ANNOTATION
        }
        # outermost attribute chains only: `params.select.budget`, not also `params.select`
        inner = {id(n.value) for n in ast.walk(fn) if isinstance(n, ast.Attribute)}
        for node in ast.walk(fn):
            if isinstance(node, ast.Attribute) and id(node) not in inner:
                chain = _attribute_chain(node)
                if chain and chain[0] in names and len(chain) > 1:
                    if chain[1] in properties:
                        keys.update(properties[chain[1]])
                    else:  # `group.key` within a group; a top-level field by its name
                        keys.add(".".join(chain[1:3] if chain[1] in groups else chain[1:2]))
    return keys


def undeclared_params(stage: dict) -> list[str]:
    declared = set()
    for entry in stage.get("params", []):
        declared.update([entry] if isinstance(entry, str) else [k for v in entry.values() for k in v])
    read = set().union(*(params_read(f) for f in closure(stage_module(stage)) if f != PARAMS_FILE))
    covered = lambda key: any(key == d or key.startswith(d + ".") for d in declared)  # noqa: E731
    return sorted(k for k in read if not covered(k))


STAGES = load_stages()


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_source_file_a_stage_loads_is_a_dep(name):
    missing = missing_deps(STAGES[name])
    assert not missing, f"dvc.yaml stage {name!r} loads these files without naming them in deps: {missing}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_params_group_a_stage_reads_is_declared(name):
    undeclared = undeclared_params(STAGES[name])
    assert not undeclared, f"dvc.yaml stage {name!r} reads params it does not declare: {undeclared}"


def test_closure_follows_imports_inside_functions(tmp_path, monkeypatch):
    """A hand-built package: an import inside a function body and a package __init__ count."""
    pkg = tmp_path / "stages"
    (pkg / "deep").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "deep" / "__init__.py").write_text("")
    (pkg / "deep" / "leaf.py").write_text("X = 1\n")
    (pkg / "other.py").write_text("Y = 2\n")
    (pkg / "entry.py").write_text("def run():\n    from stages.deep import leaf\n    return leaf.X\n")
    monkeypatch.setitem(SOURCE_ROOTS, "stages", tmp_path)
    imported_modules.cache_clear()
    found = {p.relative_to(tmp_path).as_posix() for p in closure("stages.entry")}
    imported_modules.cache_clear()
    assert found == {"stages/__init__.py", "stages/entry.py", "stages/deep/__init__.py", "stages/deep/leaf.py"}


def test_a_deliberately_missing_dep_is_reported():
    stage = dict(STAGES["train"])
    stage["deps"] = [d for d in stage["deps"] if d not in ("src/salis/engine/training.py", "src/salis/model")]
    missing = missing_deps(stage)
    assert "src/salis/engine/training.py" in missing and "src/salis/model/heads.py" in missing


def test_params_read_through_a_params_argument_are_found(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "def f(params: Params, other):\n"
        "    x = params.select.budget + other.select.initial\n"
        "    return params.num_cycles, params.seed, g(params.train), params.cycles.items()\n"
    )
    assert params_read(source) == {"select.budget", "cycles", "seed", "train"}


if __name__ == "__main__":
    for name, stage in STAGES.items():
        print(f"{name}:")
        for f in sorted(closure(stage_module(stage))):
            print("   ", f.relative_to(ROOT))
        print("  params:", sorted(set().union(*(params_read(f) for f in closure(stage_module(stage)) if f != PARAMS_FILE))))
        print("  missing deps:", missing_deps(stage), " undeclared params:", undeclared_params(stage))
    sys.exit(0)
