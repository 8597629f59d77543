"""The README's five-line PACS recipe runs as printed, on free ports instead of 8042 and 8000."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from krypton.benchmarks.orthanc import free_port, orthanc_binary

pytestmark = pytest.mark.pacs

ROOT = Path(__file__).resolve().parents[2]
[RECIPE] = [block for block in re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(),
                                          re.DOTALL) if "KRYPTON_PACS_URL" in block]


def test_the_readme_recipe_has_five_lines() -> None:
    assert len(RECIPE.strip().splitlines()) == 5


def test_the_readme_recipe_finds_map_overlay_and_report_in_orthanc(tmp_path: Path) -> None:
    """The five lines as one script, as pasted at once; Orthanc's and Krypton's ports moved."""
    if orthanc_binary() is None:
        pytest.skip("Orthanc is not installed (the test command installs it)")
    pacs, api, dicom = free_port(), free_port(), free_port()
    config = tmp_path / "deploy" / "orthanc"
    config.mkdir(parents=True)
    text = (ROOT / "deploy/orthanc/orthanc.json").read_text()
    (config / "orthanc.json").write_text(
        text.replace("8042", str(pacs)).replace("4242", str(dicom)))
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1])
    script = RECIPE.replace("8042", str(pacs)).replace("8001", str(api))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KRYPTON_")}
    shell = subprocess.Popen(["bash", "-c", f"{script}\nwait"], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    # A script that hangs is stopped, which ends its output: the read below cannot hang.
    watchdog = threading.Timer(300, os.killpg, (shell.pid, signal.SIGTERM))
    watchdog.start()
    try:
        output = _until(shell, "Krypton occlusion ", count=3)
    finally:
        watchdog.cancel()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGTERM)
        shell.wait(timeout=30)
    assert "stored in PACS 'pacs'" in output, output[-3000:]
    assert sorted(line for line in output.splitlines() if line.startswith("Krypton occlusion")
                  ) == ["Krypton occlusion heatmap", "Krypton occlusion overlay",
                        "Krypton occlusion report"]


def _until(shell: subprocess.Popen[str], start: str, *, count: int) -> str:
    """The script's output until ``count`` lines starting with ``start`` (what its last line
    prints), or its end."""
    assert shell.stdout is not None
    lines: list[str] = []
    for line in shell.stdout:
        lines.append(line.rstrip("\n"))
        if sum(seen.startswith(start) for seen in lines) == count:
            break
    return "\n".join(lines)
