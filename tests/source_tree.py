"""The ``krypton`` import name as a tree of files, for tools that find modules by path.

``pyproject.toml`` maps one import name over the design's top-level folders
(``krypton.engine`` is ``engine/``). Python follows the mapping through the
installed package, but a type checker or an import-graph tool looks for
``krypton/engine/*.py`` on disk. This builds that layout from links to the
real files, read from the same mapping setuptools uses, so a module added to
a folder is seen without reinstalling.

    python -m tests.source_tree /tmp/krypton-tree    # then MYPYPATH=/tmp/krypton-tree ...
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def link_tree(destination: Path) -> Path:
    """Link every module of every ``krypton`` package into ``destination``; returns it."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders: dict[str, str] = setuptools["package-dir"]
    for package in setuptools["packages"]:
        parts = package.split(".")
        mapped = next(".".join(parts[:n]) for n in range(len(parts), 0, -1)
                      if ".".join(parts[:n]) in folders)
        source = ROOT / folders[mapped] / Path(*parts[len(mapped.split(".")):])
        target = destination / Path(*parts)
        target.mkdir(parents=True, exist_ok=True)
        for module in source.glob("*.py"):
            (target / module.name).symlink_to(module)
    return destination


if __name__ == "__main__":
    sys.stdout.write(f"{link_tree(Path(sys.argv[1]))}\n")
