"""Every module a stage imports is in its deps: a change in any of them re-runs the stage.

The imports are read from the code (ast), followed through the project's own modules, and
compared with each stage's `deps` in dvc.yaml. Only the plumbing below may be left out: it
moves files and reports errors, and changes no result.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PLUMBING = {
    "stages/__init__.py",  # the package docstrings (checked below)
    "stages/common/__init__.py",
    "stages/data/__init__.py",
    "stages/models/__init__.py",
    "stages/common/cli.py",  # logging and exit codes
    "stages/common/errors.py",  # exception classes
    "stages/common/fsutil.py",  # atomic writes
    "stages/common/paths.py",  # path constants: a moved output changes dvc.yaml too
    "stages/common/params.py",  # validation: the values come from params.yaml, which DVC tracks
}


def project_imports(module: Path) -> set[str]:
    """Files of the `stages` package that `module` imports, directly or not (itself included,
    and the `__init__.py` of every package on the way); the imports of plumbing modules are not
    followed (common/params.py imports the type names only to validate them)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        path = todo.pop()
        name = path.relative_to(ROOT).as_posix()
        if name in seen:
            continue
        seen.add(name)
        if name in PLUMBING:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for dotted in names:
                if dotted.split(".")[0] != "stages":
                    continue
                # a module, or a package: importing `stages.data.images` runs stages/__init__.py
                # and stages/data/__init__.py first
                parts = dotted.split(".")
                for end in range(1, len(parts) + 1):
                    base = ROOT.joinpath(*parts[:end])
                    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                        if candidate.is_file():
                            todo.append(candidate)
    return seen


def stage_modules(stage: dict) -> list[Path]:
    """The project modules a stage's command runs (`python -m stages.x`)."""
    return [
        ROOT / (m.replace(".", "/") + ".py") for m in re.findall(r"-m (stages\.\w+)", stage["cmd"])
    ]


def covered(module: str, deps: list[str]) -> bool:
    return any(module == dep or module.startswith(dep.rstrip("/") + "/") for dep in deps)


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_imported_module_is_a_dependency(name):
    stage = STAGES[name]
    imported = set().union(*(project_imports(m) for m in stage_modules(stage)), set())
    missing = sorted(m for m in imported - PLUMBING if not covered(m, stage.get("deps", [])))
    assert not missing, f"stage {name} imports {missing} but does not list them in its deps"


def test_every_stage_runs_project_code():
    """The check above reads `-m stages.x` from each command; a stage that runs its code some
    other way would pass it unchecked."""
    for name, stage in STAGES.items():
        assert stage_modules(stage), f"stage {name} runs no `python -m stages.…` module"


def test_the_import_reader_follows_imports(tmp_path):
    """The reader follows from-imports through the subpackages, their `__init__.py` included
    (a real stage as the sample)."""
    found = project_imports(ROOT / "stages/set_up_diffusers.py")
    assert {
        "stages/models/tiny_model.py",
        "stages/data/synthetic.py",
        "stages/models/shipped.py",
        "stages/__init__.py",
        "stages/data/__init__.py",
    } <= found


def test_package_inits_hold_only_a_docstring():
    """The package `__init__.py` files are left out of the deps above: they must stay code-free."""
    for name in sorted(m for m in PLUMBING if m.endswith("__init__.py")):
        body = ast.parse((ROOT / name).read_text(encoding="utf-8")).body
        assert all(
            isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body
        ), f"{name} holds code: list it in the deps of the stages that import it"
