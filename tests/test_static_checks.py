"""The code as the tools see it: typed throughout, and layered as docs/design.md says.

Both checks read ``tests/source_tree.py``'s layout of the ``krypton`` import
name, where ``krypton/engine/base.py`` is ``engine/base.py``: without it a type
checker types every ``krypton.*`` import as unknown and an import-graph tool
draws no arrows between the folders.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.source_tree import ROOT, link_tree

CONFIG = ROOT / "pyproject.toml"


def _run(tree: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """``command`` with ``tree`` first on the paths Python and mypy search."""
    env = {**os.environ, "PYTHONPATH": str(tree), "MYPYPATH": str(tree)}
    return subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True,
                          timeout=600, check=False)


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "lint-imports"
    return _run(tree, str(script), "--config", str(CONFIG), "--no-cache")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return link_tree(tmp_path_factory.mktemp("source-tree"))


def test_the_package_type_checks_strictly_with_its_own_modules_resolved(tree: Path) -> None:
    result = _run(tree, sys.executable, "-m", "mypy", "--config-file", str(CONFIG),
                  "--cache-dir", str(tree / ".mypy_cache"), "-p", "krypton")
    assert result.returncode == 0, result.stdout + result.stderr
    # Every module was read, not skipped as missing: one line counts them.
    checked = int(result.stdout.split(" source files")[0].rsplit(" ", 1)[1])
    assert checked == len(list(tree.rglob("*.py")))


def test_the_layers_of_the_design_hold(tree: Path) -> None:
    result = _lint_imports(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_engine_importing_the_service_breaks_the_layers(tmp_path: Path) -> None:
    tree = link_tree(tmp_path / "tree")
    module = tree / "krypton" / "engine" / "errors.py"
    source = module.read_text()
    module.unlink()
    module.write_text(source + "\nimport krypton.service.store  # noqa: E402,F401\n")
    result = _lint_imports(tree)
    assert result.returncode != 0
    assert "krypton.engine.errors -> krypton.service.store" in result.stdout
