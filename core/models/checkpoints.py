"""Reading weights: single-file DiT checkpoints (.safetensors, weights-only .pth) and component folders,
and writing a DiT back in the authors' layout. The layouts and their conversion are in layouts.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import ModelLoadError
from .layouts import BLOCK_KEY, BLOCK_RENAMES, TOP_RENAMES, detect_layout, rename_prefix


def assign_folder_weights(module: torch.nn.Module, folder: Path, what: str, dtype: torch.dtype,
                          device: torch.device, rename=lambda name: name, extra_allowed: bool = False) -> None:
    """Load every .safetensors file in `folder` into `module` (built on the meta device), after checking that
    no tensor is missing and every shape fits; `extra_allowed`: tensors the module has no place for are
    skipped (the layers a text encoder's reader never runs)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{folder} has no .safetensors weights for the {what}.")
    wanted = module.state_dict()
    state = {}
    for file in files:
        state.update((rename(name), tensor) for name, tensor in read_state_dict(file).items())
    unexpected = [] if extra_allowed else sorted(set(state) - set(wanted))
    missing = sorted(set(wanted) - set(state))
    if missing or unexpected:
        raise ModelLoadError(f"{folder}: the {what}'s weights do not match its config ({len(missing)} missing, "
                             f"{len(unexpected)} unexpected, e.g. {(missing or unexpected)[0]}).")
    for name in wanted:
        if state[name].shape != wanted[name].shape:
            raise ModelLoadError(f"{folder}: tensor {name} has shape {tuple(state[name].shape)}, the config needs "
                                 f"{tuple(wanted[name].shape)}.")
    module.load_state_dict({name: state[name].to(device=device, dtype=dtype) for name in wanted}, assign=True)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load tensors from .safetensors or (weights only, never arbitrary pickles) .pth/.pt/.bin."""
    if not path.exists():
        raise ModelLoadError(f"Checkpoint not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelLoadError(
                f"{path} is not a readable .safetensors file (truncated or corrupt: {exc}). "
                "Download or copy it again."
            ) from None
    if suffix in (".pth", ".pt", ".bin", ".ckpt"):
        try:
            data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # torch raises many types for bad pickles; all mean the same here
            raise ModelLoadError(
                f"{path} could not be read as a weights-only PyTorch checkpoint ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}). It may be truncated, or hold "
                "code as well as weights, which Lumina Studio refuses to run."
            ) from None
        for key in ("model", "state_dict", "module"):
            if isinstance(data, dict) and isinstance(data.get(key), dict):
                data = data[key]
        if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
            raise ModelLoadError(f"{path} does not hold a dictionary of tensors.")
        return data
    raise ModelLoadError(
        f"{path}: unsupported checkpoint type '{suffix}'. Use .safetensors (or .pth/.pt/.bin weights)."
    )


def original_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `to_diffusers_layout` for diffusers-layout tensors: the authors' key names.

    Used to write checkpoints that the authors' code and ComfyUI read (and by the tests).
    """
    inverse_top = {new: old for old, new in TOP_RENAMES.items()}
    inverse_block = {new: old for old, new in BLOCK_RENAMES.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        match = BLOCK_KEY.match(key)
        if not match:
            out[rename_prefix(key, inverse_top)] = tensor
            continue
        block, rest = match.group(1) + "." + match.group(2), match.group(3)
        part = re.match(r"attn\.to_([qkv])\.weight$", rest)
        if part:
            qkv.setdefault(block, {})[part.group(1)] = tensor
            continue
        if rest.startswith("norm1.norm.") or (rest.startswith("norm1.") and not rest.startswith("norm1.linear.")):
            rest = "attention_norm1." + rest.split(".")[-1]
        else:
            rest = rename_prefix(rest, inverse_block)
        out[f"{block}.{rest}"] = tensor
    for block, parts in qkv.items():
        out[f"{block}.attention.qkv.weight"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    hidden = state["x_embedder.weight"].shape[0]
    out["norm_final.weight"] = torch.ones(hidden, dtype=state["x_embedder.weight"].dtype)
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m core.models.checkpoints FILE`: check a pickled checkpoint in a process of its own
    (the app never imports torch), with the same code that loads it; exit 1 with the reason on stderr."""
    import sys

    path = Path((argv or sys.argv[1:])[0])
    try:
        detect_layout(read_state_dict(path))
    except ModelLoadError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
