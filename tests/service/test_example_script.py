"""``krypton serve`` as a user starts it, driven by ``examples/heatmap.sh`` as printed."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.service import helpers

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def served(registry: Path) -> Iterator[str]:
    """A real uvicorn process in embedded mode (no Redis) on a free port."""
    port = _free_port()
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith("KRYPTON_") and k != "REDIS_URL"}
    environment["KRYPTON_REGISTRY"] = str(registry)
    krypton = Path(sys.executable).with_name("krypton")
    process = subprocess.Popen([str(krypton), "serve", "--port", str(port)], env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"krypton serve did not become ready: "
                            f"{process.stderr.read().decode() if process.stderr else ''}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.skipif(shutil.which("curl") is None, reason="examples/heatmap.sh uses curl")
def test_example_script_against_krypton_serve_writes_png_overlay_and_json(
        served: str, tmp_path: Path) -> None:
    image = tmp_path / "retina.jpg"
    helpers.retina_image().save(image)
    completed = subprocess.run(
        ["bash", str(ROOT / "examples" / "heatmap.sh"), str(image), str(tmp_path / "out")],
        env={**os.environ, "KRYPTON_URL": served, "KRYPTON_MODEL": helpers.MODEL},
        capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0, completed.stderr
    with Image.open(tmp_path / "out" / "overlay.png") as overlay:
        assert overlay.size == helpers.RETINA_SIZE
    document = json.loads((tmp_path / "out" / "heatmap.json").read_text())
    side = (helpers.INPUT_SIZE - 16) // 8 + 1
    assert document["shape"] == [side, side]
