"""A model folder (a training checkpoint's, or any diffusers folder) written for other tools.

  comfyui    one .safetensors: the authors' key names under `model.diffusion_model.`, what ComfyUI's
             "Load Diffusion Model" reads for Lumina 2 (text encoder and VAE load on their own nodes)
  original   one .safetensors in the authors' layout (`cap_embedder.*`, fused `qkv`), as their code saves
  diffusers  a complete diffusers folder (the transformer in the chosen precision, the rest copied)

Each DiT file carries metadata naming the base model, the run and the step. Written aside and renamed into
place, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from ..errors import ModelLoadError
from .registry import training_checkpoint

FORMATS = ("comfyui", "original", "diffusers")
DTYPES = ("bf16", "fp16", "fp32")
TRANSFORMER_FILE = Path("transformer") / "diffusion_pytorch_model.safetensors"


def checkpoint_metadata(folder: Path) -> dict[str, str]:
    """What a model folder is: its run, step and base model when it is a training checkpoint's."""
    metadata = {"written_by": "Lumina Studio", "architecture": "Lumina-Image 2.0 (Next-DiT)"}
    checkpoint = training_checkpoint(folder.resolve())
    if checkpoint is not None:
        run, step = checkpoint
        metadata.update(run=run.name, step=str(step))
        try:
            plan = json.loads((run / "plan.json").read_text(encoding="utf-8"))
            metadata["base_model"] = Path(str(plan.get("base_model", ""))).name
        except (OSError, ValueError, AttributeError):
            pass
    return metadata


def model_folder(path: Path) -> Path:
    """A checkpoint folder (step-N, holding `model/`) or a model folder itself."""
    folder = path / "model" if (path / "model" / TRANSFORMER_FILE).is_file() else path
    if not (folder / TRANSFORMER_FILE).is_file():
        raise ModelLoadError(f"{path} is neither a training checkpoint nor a diffusers model folder "
                             f"(no {TRANSFORMER_FILE}).")
    return folder


def default_output(path: Path, fmt: str, dtype: str) -> Path:
    """`RUN/exports/RUN-step-N-comfyui-bf16.safetensors` for a checkpoint, else beside the model folder."""
    folder = model_folder(path)
    metadata = checkpoint_metadata(folder)
    name = f"{metadata['run']}-step-{metadata['step']}" if "run" in metadata else folder.name
    place = folder.parents[2] / "exports" if "run" in metadata else folder.parent
    return place / f"{name}-{fmt}-{dtype}{'' if fmt == 'diffusers' else '.safetensors'}"


def export_model(path: Path, fmt: str, dtype: str, out: Path) -> Path:
    """Write the model at `path` in `fmt` and `dtype` to `out` (which must not exist); returns `out`."""
    if fmt not in FORMATS:
        raise ModelLoadError(f"Unknown format '{fmt}': use {', '.join(FORMATS)}.")
    if dtype not in DTYPES:
        raise ModelLoadError(f"Unknown precision '{dtype}': use {', '.join(DTYPES)}.")
    folder = model_folder(path)
    if out.exists():
        raise ModelLoadError(f"{out} exists already: choose another name (nothing is overwritten).")
    import torch  # here: the app imports this module for default_output, and never imports torch

    from .checkpoints import original_layout, read_state_dict
    from .layouts import COMFY_PREFIX

    metadata = checkpoint_metadata(folder)
    precision = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    state = {name: tensor.to(precision) for name, tensor in read_state_dict(folder / TRANSFORMER_FILE).items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as building:
        target = Path(building) / "export"
        if fmt == "diffusers":
            shutil.copytree(folder, target)  # hard-linked components become files of their own
            (target / TRANSFORMER_FILE).unlink()
            _save(state, target / TRANSFORMER_FILE, metadata)
        else:
            original = original_layout(state)
            _save({COMFY_PREFIX + name: t for name, t in original.items()} if fmt == "comfyui" else original,
                  target, metadata)
        target.replace(out)
    return out


def _save(state: dict, path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(path), metadata=metadata)
