"""``krypton serve`` as a user starts it, driven by ``examples/heatmap.sh`` as printed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from krypton.service.auth import KeyStore
from tests.service import helpers

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", params=["open", "keyed"])
def served(request: pytest.FixtureRequest, registry: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """A real uvicorn process in embedded mode (no Redis), once a worker is ready, and
    the environment the script needs for it: open on loopback, or with keys enforced."""
    environment: dict[str, str] = {}
    script_env: dict[str, str] = {}
    if request.param == "keyed":
        store = KeyStore(tmp_path_factory.mktemp("keys") / "keys.json")
        script_env["KRYPTON_API_KEY"] = store.add("script", "heatmaps")
        environment["KRYPTON_KEYS_FILE"] = str(store.path)
    with helpers.serving(registry, **environment) as url:
        helpers.wait_until(lambda: _ready(url), what="krypton serve to be ready")
        yield url, script_env | {"KRYPTON_URL": url}


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.mark.skipif(shutil.which("curl") is None, reason="examples/heatmap.sh uses curl")
def test_example_script_against_krypton_serve_writes_png_overlay_and_json(
        served: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    image = tmp_path / "retina.jpg"
    helpers.retina_image().save(image)
    completed = subprocess.run(
        ["bash", str(ROOT / "examples" / "heatmap.sh"), str(image), str(tmp_path / "out")],
        env={**os.environ, **served[1], "KRYPTON_MODEL": helpers.MODEL},
        capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0, completed.stderr
    with Image.open(tmp_path / "out" / "overlay.png") as overlay:
        assert overlay.size == helpers.RETINA_SIZE
    document = json.loads((tmp_path / "out" / "heatmap.json").read_text())
    side = (helpers.INPUT_SIZE - 16) // 8 + 1
    assert document["shape"] == [side, side]
