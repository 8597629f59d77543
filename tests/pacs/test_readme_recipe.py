"""The README's five-line PACS recipe runs as printed, on free ports instead of 8042 and 8000."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from krypton.benchmarks.orthanc import free_port, orthanc_binary

pytestmark = pytest.mark.pacs

ROOT = Path(__file__).resolve().parents[2]
[RECIPE] = [block for block in re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(),
                                          re.DOTALL) if "KRYPTON_PACS_URL" in block]


def test_the_readme_recipe_has_five_lines() -> None:
    assert len(RECIPE.strip().splitlines()) == 5


def test_the_readme_recipe_finds_map_overlay_and_report_in_orthanc(tmp_path: Path) -> None:
    if orthanc_binary() is None:
        pytest.skip("Orthanc is not installed (the test command installs it)")
    pacs, api, dicom = free_port(), free_port(), free_port()
    config = tmp_path / "deploy" / "orthanc"
    config.mkdir(parents=True)
    shutil.copy(ROOT / "deploy/orthanc/orthanc.json", config)
    text = (config / "orthanc.json").read_text()
    (config / "orthanc.json").write_text(
        text.replace("8042", str(pacs)).replace("4242", str(dicom)))
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1])
    lines = [line.split("  #")[0].rstrip(" &").replace("8042", str(pacs))
             for line in RECIPE.strip().splitlines()]
    lines[1] = lines[1].replace("krypton serve", f"krypton serve --port {api}")
    lines[3] += f" --url http://127.0.0.1:{api}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KRYPTON_")}
    background = [subprocess.Popen(["bash", "-c", line], cwd=tmp_path, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True) for line in lines[:2]]
    try:
        _ready(f"http://127.0.0.1:{pacs}/system", f"http://127.0.0.1:{api}/readyz")
        done = [subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=300)
                for line in lines[2:]]
    finally:
        for process in background:
            os.killpg(process.pid, 15)
            process.wait(timeout=30)
    assert [step.returncode for step in done] == [0, 0, 0], [step.stderr for step in done]
    assert "stored in PACS 'pacs'" in done[1].stdout
    assert sorted(set(done[2].stdout.split("\n")) - {""}) == [
        "Krypton occlusion heatmap", "Krypton occlusion overlay", "Krypton occlusion report"]


def _ready(*urls: str) -> None:
    deadline = time.monotonic() + 120
    for url in urls:
        while True:
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"{url} never answered"
            time.sleep(0.3)
