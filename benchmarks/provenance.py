"""Where and when a benchmark ran: the facts a figure is worthless without.

A speedup means little without the code, the machine and the command that
produced it, and a table copied by hand drifts from the run it came from.
``krypton bench --json`` stores these facts beside its rows, so that
``krypton.benchmarks.report`` can print them next to every figure.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import torch

__all__ = ["command_line", "git_commit", "invocation", "load_average", "machine",
           "run_record"]

SOURCE = Path(__file__).resolve().parent


def run_record(device: str, argv: Sequence[str] | None = None) -> dict[str, object]:
    """Date (UTC), commit, machine, library versions and command line of this process."""
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": git_commit(),
        "machine": machine(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": command_line(invocation() if argv is None else argv),
        "load_average": load_average(),
    }


def load_average() -> float | None:
    """The 1-minute load average: on a shared machine, how much else was running.

    ``None`` where the system does not say (no ``os.getloadavg``).
    """
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def git_commit(folder: Path = SOURCE) -> str:
    """The short hash of the checkout ``folder`` is in, ``+dirty`` when tracked files differ.

    An installed copy (under ``site-packages``) has no checkout of its own: a
    repository around it (a virtual environment inside one) would name the
    wrong code, so it is ``unknown``. Untracked files are not counted: results
    written beside the code would otherwise mark every later run dirty.
    """
    if "site-packages" in folder.parts:
        return "unknown"
    try:
        commit = _git(folder, "rev-parse", "--short", "HEAD")
        changes = _git(folder, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if changes else "")


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                          check=True, timeout=30).stdout.strip()


def machine(device: str) -> dict[str, object]:
    """The processor, its cores, torch's threads and the device the run used."""
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "gpu": (torch.cuda.get_device_name(torch.device(device))
                if device.startswith("cuda") else None),
        "system": f"{platform.system()} {platform.machine()}",
    }


def cpu_name() -> str:
    """The processor's model name, as /proc/cpuinfo gives it where there is one."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def invocation() -> list[str]:
    """The command as it was typed: ``sys.argv``, except under ``python -m``, where
    ``sys.argv[0]`` is the module's file and only ``sys.orig_argv`` names the module."""
    original = list(sys.orig_argv)
    if len(original) > 2 and original[1] == "-m":
        return original
    return list(sys.argv)


def command_line(argv: Sequence[str]) -> str:
    """``argv`` as a shell would take it again, the program relative to the working folder
    when it lies below it (``.venv/bin/krypton``), so the command reads the same anywhere."""
    program = Path(argv[0])
    if program.is_absolute() and program.is_relative_to(Path.cwd()):
        program = program.relative_to(Path.cwd())
    return shlex.join([str(program), *argv[1:]])
