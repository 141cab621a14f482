"""Single-file DiT checkpoints: read them, recognise their key layout, convert to diffusers names,
and derive the architecture from the tensors themselves (so small models load too).

The layouts themselves (diffusers, original, ComfyUI) are recognised in layouts.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import ModelLoadError
from .layouts import COMFY_PREFIX, detect_layout
from .nextdit import NextDiTConfig

# Whole-name renames of the original layout; block-internal renames are in _BLOCK_RENAMES.
_TOP_RENAMES = {
    "cap_embedder.": "time_caption_embed.caption_embedder.",
    "t_embedder.mlp.0.": "time_caption_embed.timestep_embedder.linear_1.",
    "t_embedder.mlp.2.": "time_caption_embed.timestep_embedder.linear_2.",
    "final_layer.adaLN_modulation.1.": "norm_out.linear_1.",
    "final_layer.linear.": "norm_out.linear_2.",
}
_BLOCK_RENAMES = {
    "attention.out.": "attn.to_out.0.",
    "attention.q_norm.": "attn.norm_q.",
    "attention.k_norm.": "attn.norm_k.",
    "feed_forward.w1.": "feed_forward.linear_1.",
    "feed_forward.w2.": "feed_forward.linear_2.",
    "feed_forward.w3.": "feed_forward.linear_3.",
    "adaLN_modulation.1.": "norm1.linear.",
    "attention_norm2.": "norm2.",
}
_BLOCK_KEY = re.compile(r"^(layers|noise_refiner|context_refiner)\.(\d+)\.(.+)$")


def _rename_prefix(key: str, renames: dict[str, str]) -> str:
    for old, new in renames.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return key


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


def to_diffusers_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and split fused qkv) so the keys match diffusers' Lumina2Transformer2DModel."""
    layout = detect_layout(state)
    if layout == "diffusers":
        return dict(state)
    if layout == "comfyui":
        # All-in-one files also carry text encoder and VAE weights; only the DiT is taken from here.
        state = {k[len(COMFY_PREFIX) :]: v for k, v in state.items() if k.startswith(COMFY_PREFIX)}
    modulated_blocks = {
        m.group(1) + "." + m.group(2)
        for k in state
        if (m := _BLOCK_KEY.match(k)) and m.group(3).startswith("adaLN_modulation.")
    }
    hidden = state["x_embedder.weight"].shape[0]
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key == "norm_final.weight":  # present in the original, unused by the model
            continue
        match = _BLOCK_KEY.match(key)
        if not match:
            converted[_rename_prefix(key, _TOP_RENAMES)] = tensor
            continue
        block = match.group(1) + "." + match.group(2)
        rest = match.group(3)
        if rest == "attention.qkv.weight":
            kv = (tensor.shape[0] - hidden) // 2
            q, k, v = torch.split(tensor, [hidden, kv, kv], dim=0)
            converted[f"{block}.attn.to_q.weight"] = q
            converted[f"{block}.attn.to_k.weight"] = k
            converted[f"{block}.attn.to_v.weight"] = v
            continue
        if rest.startswith("attention_norm1."):
            target = "norm1.norm." if block in modulated_blocks else "norm1."
            rest = target + rest[len("attention_norm1.") :]
        else:
            rest = _rename_prefix(rest, _BLOCK_RENAMES)
        converted[f"{block}.{rest}"] = tensor
    return converted


def _count_blocks(state: dict, prefix: str) -> int:
    indices = {int(m.group(2)) for k in state if (m := _BLOCK_KEY.match(k)) and m.group(1) == prefix}
    return max(indices) + 1 if indices else 0


def derive_config(state: dict[str, torch.Tensor], patch_size: int = 2) -> NextDiTConfig:
    """Read the architecture off diffusers-layout tensors."""
    try:
        hidden, patch_in = state["x_embedder.weight"].shape
        head_dim = state["layers.0.attn.norm_q.weight"].shape[0]
        heads = state["layers.0.attn.to_q.weight"].shape[0] // head_dim
        kv_heads = state["layers.0.attn.to_k.weight"].shape[0] // head_dim
        inner = state["layers.0.feed_forward.linear_1.weight"].shape[0]
        cap_feat_dim = state["time_caption_embed.caption_embedder.0.weight"].shape[0]
        out_features = state["norm_out.linear_2.weight"].shape[0]
    except KeyError as exc:
        raise ModelLoadError(f"The checkpoint is incomplete: tensor {exc} is missing.") from None
    area = patch_size * patch_size
    if patch_in % area or out_features % area:
        raise ModelLoadError(f"Patch embedding width {patch_in} does not fit patch size {patch_size}.")
    if head_dim % 6:
        raise ModelLoadError(
            f"Head width {head_dim} cannot be split into three even RoPE axes; "
            "load this model from a diffusers folder whose config.json names axes_dim_rope."
        )
    if inner == 256 * ((4 * hidden + 255) // 256):
        multiple_of, multiplier = 256, None
    else:  # any other width: a multiplier that lands exactly on it
        multiple_of, multiplier = 1, (inner + 0.5) / (4 * hidden)
    axis = head_dim // 3
    return NextDiTConfig(
        patch_size=patch_size,
        in_channels=patch_in // area,
        out_channels=out_features // area,
        hidden_size=hidden,
        num_layers=_count_blocks(state, "layers"),
        num_refiner_layers=_count_blocks(state, "noise_refiner"),
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        multiple_of=multiple_of,
        ffn_dim_multiplier=multiplier,
        axes_dim_rope=(axis, axis, axis),
        cap_feat_dim=cap_feat_dim,
    )


def original_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `to_diffusers_layout` for diffusers-layout tensors: the authors' key names.

    Used to write checkpoints that the authors' code and ComfyUI read (and by the tests).
    """
    inverse_top = {new: old for old, new in _TOP_RENAMES.items()}
    inverse_block = {new: old for old, new in _BLOCK_RENAMES.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        match = _BLOCK_KEY.match(key)
        if not match:
            out[_rename_prefix(key, inverse_top)] = tensor
            continue
        block, rest = match.group(1) + "." + match.group(2), match.group(3)
        part = re.match(r"attn\.to_([qkv])\.weight$", rest)
        if part:
            qkv.setdefault(block, {})[part.group(1)] = tensor
            continue
        if rest.startswith("norm1.norm.") or (rest.startswith("norm1.") and not rest.startswith("norm1.linear.")):
            rest = "attention_norm1." + rest.split(".")[-1]
        else:
            rest = _rename_prefix(rest, inverse_block)
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
