"""The README's Python snippets run as printed (against a running service where they
talk to one), so an API change that breaks them fails here, not for a reader."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service import helpers

ROOT = Path(__file__).resolve().parents[2]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)


@pytest.fixture(scope="module")
def served(registry: Path) -> Iterator[str]:
    with helpers.serving(registry) as url:
        yield url


def _run(block: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(folder)
    exec(compile(block, "README.md", "exec"), {"__name__": "readme"})  # noqa: S102


def test_the_readme_has_its_client_and_engine_snippets() -> None:
    assert len(BLOCKS) == 2
    assert "krypton.client" in BLOCKS[0] and "krypton.engine" in BLOCKS[1]


def test_the_client_snippet_writes_the_overlay(served: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    block = BLOCKS[0].replace("http://127.0.0.1:8000", served)
    _run(block, tmp_path, monkeypatch)
    assert (tmp_path / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_engine_snippet_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _run(BLOCKS[1], tmp_path, monkeypatch)
