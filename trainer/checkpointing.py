"""Checkpoints that survive a kill: written into a hidden folder, marked complete, then renamed.

checkpoints/step-NNNNNNNN/
  model/   a complete diffusers folder (transformer = the EMA weights, or the raw ones without EMA; the
           text encoder, tokenizer and VAE are hard links to the base model's files where the file
           system allows, else copies), so Generate, diffusers and other loaders can use it
  state/   accelerate's state (model, optimizer; sharded under FSDP), the EMA, trainer_state.json
  COMPLETE written last, before the rename: a folder without it is an interrupted save and is ignored
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from core.checked import integer, read_record, text
from core.models.loader import SAMPLING_DEFAULTS_FILE
from core.models.nextdit import NextDiTConfig
from core.storage import human_size, write_json_atomic

from .run_folder import RunFolder, best_checkpoint

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
SHARED_COMPONENTS = ("text_encoder", "tokenizer", "vae", "scheduler")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def write_model_folder(folder: Path, weights: dict[str, torch.Tensor], config: NextDiTConfig, components: Path):
    """A diffusers Lumina-Image 2.0 folder: our transformer plus the base model's other components."""
    import diffusers

    transformer = folder / "transformer"
    transformer.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(transformer / WEIGHTS_NAME))
    (transformer / "config.json").write_text(
        json.dumps({**config.to_diffusers_dict(), "_diffusers_version": diffusers.__version__}, indent=2)
    )
    for name in SHARED_COMPONENTS:
        if (components / name).is_dir():
            _link_tree(components / name, folder / name)
    # the model index, and the base model's own sampling settings (a fine-tune samples as its base did;
    # the demo model's are far from the library defaults)
    for name in ("model_index.json", SAMPLING_DEFAULTS_FILE):
        if (components / name).is_file():
            shutil.copy2(components / name, folder / name)


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link every file (a 5 GB text encoder costs no space per checkpoint); copy across devices."""
    for path in source.rglob("*"):
        destination = target / path.relative_to(source)
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, destination)
        except OSError:
            shutil.copy2(path, destination)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())


def partial_path(run: RunFolder, step: int) -> Path:
    return run.checkpoints / f".partial-{checkpoint_name(step)}"


def begin(run: RunFolder, step: int) -> Path:
    """The hidden folder a checkpoint is written into (a leftover from an interrupted save is removed)."""
    partial = partial_path(run, step)
    if partial.exists():
        shutil.rmtree(partial)
    (partial / "state").mkdir(parents=True)
    return partial


def commit(run: RunFolder, partial: Path, step: int, trainer_state: dict, keep: int, keep_best: bool = True) -> Path:
    """Mark the checkpoint complete and move it into place; older ones beyond `keep` are deleted, except the
    one with the best validation loss when `keep_best`."""
    write_json_atomic(partial / "state" / "trainer_state.json", trainer_state)
    _fsync_tree(partial)
    (partial / "COMPLETE").write_text(str(step))
    final = run.checkpoints / checkpoint_name(step)
    if final.exists():  # the same step saved again (a stop right after a scheduled save)
        shutil.rmtree(final)
    os.replace(partial, final)
    checkpoints = run.checkpoint_list()
    best = best_checkpoint(checkpoints) if keep_best else None
    for old in checkpoints[:-keep]:
        if best is None or old.path != best.path:
            shutil.rmtree(old.path, ignore_errors=True)
    for leftover in run.checkpoints.glob(".partial-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    return final


class CheckpointUnreadable(Exception):
    """No checkpoint of a run can be resumed from; the message names each one and why."""


TRAINER_STATE_FIELDS = {"global_step": integer(0), "stage": integer(0), "step_in_stage": integer(0)}


def read_trainer_state(checkpoint: Path, stages: int) -> dict:
    """A checkpoint's trainer_state.json, checked (ValueError naming what is wrong)."""
    path = checkpoint / "state" / "trainer_state.json"
    state, problems = read_record(path, TRAINER_STATE_FIELDS)
    missing = [name for name in TRAINER_STATE_FIELDS if name not in state]
    if problems or missing:
        raise ValueError("; ".join(problems) or f"{path.name} lacks {', '.join(missing)}")
    if state["stage"] >= stages:
        raise ValueError(f"{path.name} names stage {state['stage'] + 1}, and the config has {stages}")
    return {name: state[name] for name in TRAINER_STATE_FIELDS}


def saved_optimizer_state(checkpoint: Path) -> str:
    """What the checkpoint's optimizer state holds (RunConfig.optimizer_state_kind); runs saved before it was
    recorded held AdamW for the model."""
    record, _ = read_record(checkpoint / "state" / "trainer_state.json", {"optimizer_state": text()})
    return record.get("optimizer_state", "adamw, one for the model")


class CheckpointSpaceError(OSError):
    """A checkpoint could not be written for lack of disk space; the message says what is intact and needed."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return self.strerror


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC from Python, or from a library that reports it only in words (safetensors' SafetensorError)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(exc) or "os error 28" in str(exc)


def save_size(run: RunFolder, parameters: int, with_ema: bool) -> int:
    """Bytes one more checkpoint takes: the newest one's own files, or (before the first) weights, AdamW's two
    moments, the EMA and the exported transformer in fp32. Linked base-model files cost nothing."""
    latest = run.latest_checkpoint()
    if latest is not None:
        return sum(p.stat().st_size for p in latest.rglob("*") if p.is_file() and p.stat().st_nlink == 1)
    return parameters * 4 * (1 + 2 + int(with_ema) + 1)


def disk_full_error(run: RunFolder, needed: int) -> CheckpointSpaceError:
    latest = run.latest_checkpoint()
    intact = (f"the last complete checkpoint, {latest.relative_to(run.path)}, is intact" if latest
              else "no checkpoint had been saved yet")
    free = shutil.disk_usage(run.checkpoints).free
    return CheckpointSpaceError(
        f"the disk is full: a checkpoint could not be saved in {run.checkpoints}, and {intact}. One save needs "
        f"about {human_size(needed)} free ({human_size(free)} is free now): free some space (or lower "
        "keep_checkpoints), then continue with --resume.")
