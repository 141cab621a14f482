"""The NVIDIA GPUs on this machine as nvidia-smi lists them (no torch, so the app can ask), and choosing
some of them for a process by the same numbers."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from .errors import LuminaError


@dataclass(frozen=True)
class GPU:
    index: int  # nvidia-smi's number (PCI bus order)
    name: str
    memory: int  # bytes

    def describe(self) -> str:
        return f"GPU {self.index}: {self.name}, {self.memory / 2**30:.0f} GiB"


def nvidia_gpus() -> list[GPU]:
    """The GPUs nvidia-smi lists; none when it is missing or fails (no NVIDIA driver)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in out.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) == 3 and parts[0].isdigit() and parts[2].isdigit():
            found.append(GPU(int(parts[0]), parts[1], int(parts[2]) * 2**20))
    return found


def parse_gpu_ids(text: str) -> list[int]:
    """'0,2' -> [0, 2]; checked against the GPUs nvidia-smi lists."""
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise LuminaError(f"--gpu-ids {text}: give GPU numbers separated by commas, e.g. 0,2.") from None
    found = {gpu.index for gpu in nvidia_gpus()}
    wrong = [i for i in ids if i not in found]
    if not ids or len(set(ids)) != len(ids) or wrong:
        have = ", ".join(map(str, sorted(found))) or "none (nvidia-smi lists no GPU)"
        raise LuminaError(f"--gpu-ids {text}: each GPU once, from the ones this machine has: {have}.")
    return ids


def use_only(ids: list[int]) -> None:
    """Let this process and its children see only these GPUs, numbered as nvidia-smi numbers them (CUDA's
    own default order puts the fastest first). Call before torch first asks CUDA."""
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, ids))
