"""Several GPUs: one captioning process per GPU through `accelerate launch`, each taking its share of the
images (every n-th of the planned list). The processes share the folder's state file (SQLite, one
transaction per image), so a rerun resumes all shares at once.
"""

from __future__ import annotations

import os
import subprocess
import sys

from ..network import free_port


def launch_shards(processes: int, argv: list[str], device: str) -> int:
    """Run `lumina-studio caption ARGV` once per process under accelerate; the exit code of the worst."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), "--multi_gpu", "-m", "core.cli", *argv]
    env = {**os.environ, "LUMINA_CAPTION_DEVICE": device}
    return subprocess.call(command, env=env)


def this_share(device: str):
    """(share function or None, this process's rank, its device) from the launcher's environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None, 0, device
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = os.environ.get("LUMINA_CAPTION_DEVICE", device)
    if device in ("auto", "cuda"):
        import torch

        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    return (lambda images: images[rank::world]), rank, device
