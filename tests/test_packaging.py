"""The package as it ships: one import name over the top-level folders, an API without torch.

The wheel test builds the distribution, installs it in a fresh virtual
environment (its dependencies borrowed from this one, so nothing is
downloaded but the build backend) and starts ``krypton serve`` from it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent

NO_TORCH = """
import sys
import krypton.cli
import krypton.service.app as api
from krypton.service.config import Settings

app = api.create_app(Settings(redis_url="redis://127.0.0.1:1/0"))
app.openapi()
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "torchvision")))
print(loaded)
sys.exit(1 if loaded else 0)
"""


def test_api_process_loads_no_torch() -> None:
    # A fresh interpreter: this test process has torch loaded already.
    result = subprocess.run([sys.executable, "-c", NO_TORCH], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0, f"torch modules loaded: {result.stdout} {result.stderr}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _bare_venv(folder: Path) -> Path:
    """A fresh venv without krypton, its dependencies borrowed from this one; its python.

    The borrowed folder is a plain path, not a site folder, so this
    environment's editable install of krypton does not come along.
    """
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], check=True, capture_output=True, text=True)
    Path(site.stdout.strip(), "dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the built wheel installed; its ``bin`` folder."""
    folder = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(folder / "dist"), str(ROOT)], check=True, timeout=600)
    (wheel,) = (folder / "dist").glob("krypton-*.whl")
    python = _bare_venv(folder)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                    "--no-deps", "--no-index", "-q", str(wheel)], check=True, timeout=300)
    return python.parent


def test_wheel_installs_every_package_under_one_import_name(installed_wheel: Path) -> None:
    script = ("import krypton, krypton.engine, krypton.models.zoo, krypton.render, "
              "krypton.service.routes, krypton.demo, krypton.benchmarks, krypton.cli; "
              "print(krypton.engine.__file__)")
    result = subprocess.run([str(installed_wheel / "python"), "-c", script], cwd="/",
                            capture_output=True, text=True, timeout=120, check=True)
    location = Path(result.stdout.strip())
    assert ROOT not in location.parents, f"imported from the checkout: {location}"
    assert location.parent.name == "engine" and location.parent.parent.name == "krypton"


@contextlib.contextmanager
def _serving(bin_folder: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith("KRYPTON_") and k != "REDIS_URL"}
    process = subprocess.Popen([str(bin_folder / "krypton"), "serve", "--port", str(port)],
                               cwd="/", env=environment, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        yield process
    finally:
        process.terminate()
        process.wait(30)


def test_wheel_runs_krypton_serve(installed_wheel: Path) -> None:
    port = _free_port()
    with _serving(installed_wheel, port) as process:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stderr.read().decode()  # type: ignore[union-attr]
            with contextlib.suppress(httpx.TransportError):
                response = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5)
                if response.status_code == 200:
                    break
            assert time.monotonic() < deadline, "krypton serve did not answer within 120 s"
            time.sleep(0.2)
    assert {m["name"] for m in response.json()} == {"resnet18", "vgg16", "inception_v3"}


def test_gpu_script_dry_run_goes_end_to_end_on_the_cpu_from_a_plain_checkout(
        tmp_path: Path) -> None:
    # As on a GPU image: a python that has the dependencies but no krypton installed.
    python = _bare_venv(tmp_path)
    out = tmp_path / "out"
    result = subprocess.run(
        [str(ROOT / "benchmarks" / "gpu.sh"), "--dry-run"], capture_output=True, text=True,
        timeout=600, env={**os.environ, "PYTHON": str(python), "OUT": str(out)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "STEP FAILED" not in result.stdout, result.stdout[-3000:]
    summary = result.stdout.split("=== summary")[-1]
    assert "| resnet18 | 224 | 196 |" in summary, result.stdout[-3000:]
    assert "| 1 | 1 | 2 |" in summary, "the service run's row"
    assert f"krypton from {tempfile.gettempdir()}" in result.stdout
    assert (out / "bench.json").is_file() and (out / "checkpoints" / "demo-resnet18.pt").is_file()
