"""A scripted `nvidia-smi` on PATH that lists made-up GPUs, for the code that asks it which GPUs there are."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def fake_nvidia_smi(folder: Path, monkeypatch, gpus: list[tuple[str, int]]) -> None:
    """`gpus`: (name, memory in MiB) each, numbered from 0 as nvidia-smi numbers them."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = "\n".join(f"{i}, {name}, {mib}" for i, (name, mib) in enumerate(gpus))
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\ncat <<'ROWS'\n{rows}\nROWS\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
