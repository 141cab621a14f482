"""The arithmetic behind a run's plan that the wizard shows before anything starts: the base model's size
from its files, the disk its checkpoints need, the memory each stage needs, a fresh run name. Torch-free:
the app imports it, and it reads safetensors headers, never weights.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from core.errors import LuminaError
from core.models.layouts import header_tensors, known_architecture
from core.models.registry import find_model
from core.storage import first_free, runs_dir

from .config import parse_config
from .memory import MemoryEstimate, stage_estimates

CHECKPOINT_COPIES = 5  # one checkpoint holds the weights, two AdamW moments, the EMA and the exported model


def fresh_run_name(name: str) -> str:
    """`name`-date-time, free in the runs folder; an earlier run's own date and time are replaced, not kept."""
    base = re.sub(r"-\d{8}-\d{4}(-\d+)?$", "", name) or "run"
    return first_free(f"{base}-{time.strftime('%Y%m%d-%H%M')}", lambda candidate: (runs_dir() / candidate).exists())


def model_facts(config: dict):
    """(architecture, parameter count, parsed config) without torch, from the model's config.json or
    safetensors header; None for a pickled single file (only torch lists its tensors) or a config still wrong."""
    try:
        run = parse_config(config, "the wizard's config")
        model = known_architecture(find_model(run.base_model))
    except (LuminaError, OSError, TypeError, ValueError):
        return None
    return (model, model_bytes(config) // 4, run) if model is not None else None


def memory_estimates(found, device: str, processes: int) -> list[MemoryEstimate] | None:
    """The trainer's memory estimate per stage, without torch, from what model_facts found (None: none)."""
    if found is None:
        return None
    model, params, run = found
    precision = "bf16" if device == "cuda" and run.precision in ("auto", "bf16") else "no"
    return stage_estimates(model, params, run, processes, device, precision)


def model_bytes(config: dict) -> int:
    """The base model's DiT weights in fp32 (as the trainer keeps them), from the safetensors headers (an
    all-in-one file's text encoder and VAE left out); a pickled file's size."""
    from math import prod

    from core.models.sources import safetensors_header

    try:
        source = find_model(config.get("base_model", ""))
        if source.is_single_file:
            if source.dit.suffix.lower() != ".safetensors":
                return source.dit.stat().st_size
            return 4 * sum(t.numel() for t in header_tensors(source.dit).values())
        files = sorted(Path(source.dit).glob("*.safetensors"))
        return 4 * sum(prod(entry["shape"]) for f in files for entry in safetensors_header(f).values())
    except (LuminaError, OSError, KeyError, TypeError):
        return 0


def disk_needed(config: dict) -> int:
    return model_bytes(config) * CHECKPOINT_COPIES * (int(config.get("keep_checkpoints", 2)) + 1)


def disk_free() -> int:
    folder = runs_dir()
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free
