"""The layout's rules, checked: import contracts (pyproject.toml), complete dvc.yaml deps, no
TensorFlow where a stage does not need it."""

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "cancer_classifier"
SOURCE = ROOT / "src"


def module_file(module: str) -> Path:
    """The source file of a package module, relative to the project."""
    path = SOURCE / Path(*module.split("."))
    return (path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).relative_to(ROOT)


def import_closure(graph: grimp.ImportGraph, entry: str) -> set[Path]:
    """Every package file running ``entry`` can execute: its static imports (function-level ones
    included), transitively, and the ``__init__.py`` of every package on the way."""
    modules = {entry} | graph.find_upstream_modules(entry)
    files = set()
    for module in modules:
        parts = module.split(".")
        files |= {module_file(".".join(parts[:n])) for n in range(1, len(parts) + 1)}
    return files


def covered(path: Path, deps: list[str]) -> bool:
    return any(path == Path(dep) or Path(dep) in path.parents for dep in deps)


def stages() -> dict[str, dict]:
    """dvc.yaml's stages, a foreach stage as its template (its deps do not depend on the item)."""
    document = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    return {name: stage.get("do", stage) for name, stage in document["stages"].items()}


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(PACKAGE)


def test_import_contracts_hold():
    """Tasks never import each other; core never imports a task, the app or TensorFlow; serving never
    imports training code (the contracts in pyproject.toml)."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    result = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "broken" not in result.stdout.lower().replace("0 broken", "")


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_declares_every_module_it_imports(graph, name):
    """Editing any module a stage runs re-runs that stage: no stale pipeline (dvc.yaml deps)."""
    stage = stages()[name]
    entry = stage["cmd"].split()[2]  # python -m <module> [task]
    missing = sorted(str(path) for path in import_closure(graph, entry) if not covered(path, stage["deps"]))
    assert not missing, f"dvc.yaml stage {name!r} imports these without declaring them in deps: {missing}"


def test_stage_declares_no_module_it_does_not_import(graph):
    """A declared source file the stage never imports re-runs it for nothing."""
    for name, stage in stages().items():
        entry = stage["cmd"].split()[2]
        closure = import_closure(graph, entry)
        files = [dep for dep in stage["deps"] if dep.startswith("src/") and dep.endswith(".py")]
        extra = sorted(dep for dep in files if Path(dep) not in closure)
        assert not extra, f"dvc.yaml stage {name!r} declares modules it never imports: {extra}"


@pytest.mark.parametrize("name", [n for n in sorted(stages()) if n.startswith("tabular_")] + ["prepare_base_model"])
def test_stage_runs_without_tensorflow(graph, name):
    """Tabular stages (with their default models) and prepare_base_model pay no TensorFlow start."""
    entry = stages()[name]["cmd"].split()[2]
    check = f"import sys; import {entry}; print(sorted({{'tensorflow', 'keras'}} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]", f"{entry} imports {result.stdout.strip()}"
