"""The key layouts a Lumina-Image 2.0 DiT checkpoint comes in, their conversion to diffusers names, and the
architecture read off the tensors' shapes (so small models load too).

No torch here: the conversion reads only names, shapes and `split`, so it runs on torch tensors and on a
safetensors header's entries alike (`header_tensors`): the app and the wizard's memory estimate check a file
without loading its weights. Layouts: diffusers (`time_caption_embed.*`), the authors' original
(`cap_embedder.*`, fused `qkv`), and ComfyUI (the original under `model.diffusion_model.`, possibly beside
`text_encoders.` and `vae.`).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from math import prod
from pathlib import Path
from typing import TypeVar

from ..errors import ModelLoadError
from .nextdit_config import NextDiTConfig, folder_config
from .sources import ModelSource, safetensors_header

Tensor = TypeVar("Tensor")  # a torch tensor or a HeaderTensor

COMFY_PREFIX = "model.diffusion_model."
ORIGINAL_MARKER = "cap_embedder.0.weight"
DIFFUSERS_MARKER = "time_caption_embed.caption_embedder.0.weight"


def detect_layout(names: Collection[str]) -> str:
    """'diffusers', 'original' or 'comfyui'; a clear error for anything else."""
    if DIFFUSERS_MARKER in names:
        return "diffusers"
    if ORIGINAL_MARKER in names:
        return "original"
    if COMFY_PREFIX + ORIGINAL_MARKER in names:
        return "comfyui"
    sample = ", ".join(sorted(names)[:4]) or "no tensors at all"
    raise ModelLoadError(
        "This checkpoint is not a Lumina-Image 2.0 DiT: it has neither "
        f"'{ORIGINAL_MARKER}' (original/ComfyUI layout) nor '{DIFFUSERS_MARKER}' (diffusers layout). "
        f"Its first keys are: {sample}."
    )


# Whole-name renames of the original layout; block-internal renames are in BLOCK_RENAMES.
TOP_RENAMES = {
    "cap_embedder.": "time_caption_embed.caption_embedder.",
    "t_embedder.mlp.0.": "time_caption_embed.timestep_embedder.linear_1.",
    "t_embedder.mlp.2.": "time_caption_embed.timestep_embedder.linear_2.",
    "final_layer.adaLN_modulation.1.": "norm_out.linear_1.",
    "final_layer.linear.": "norm_out.linear_2.",
}
BLOCK_RENAMES = {
    "attention.out.": "attn.to_out.0.",
    "attention.q_norm.": "attn.norm_q.",
    "attention.k_norm.": "attn.norm_k.",
    "feed_forward.w1.": "feed_forward.linear_1.",
    "feed_forward.w2.": "feed_forward.linear_2.",
    "feed_forward.w3.": "feed_forward.linear_3.",
    "adaLN_modulation.1.": "norm1.linear.",
    "attention_norm2.": "norm2.",
}
BLOCK_KEY = re.compile(r"^(layers|noise_refiner|context_refiner)\.(\d+)\.(.+)$")


def rename_prefix(key: str, renames: dict[str, str]) -> str:
    for old, new in renames.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def to_diffusers_layout(state: dict[str, Tensor]) -> dict[str, Tensor]:
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
        if (m := BLOCK_KEY.match(k)) and m.group(3).startswith("adaLN_modulation.")
    }
    if "x_embedder.weight" not in state:
        raise ModelLoadError("The checkpoint is incomplete: tensor 'x_embedder.weight' is missing.")
    hidden = state["x_embedder.weight"].shape[0]
    converted: dict[str, Tensor] = {}
    for key, tensor in state.items():
        if key == "norm_final.weight":  # present in the original, unused by the model
            continue
        match = BLOCK_KEY.match(key)
        if not match:
            converted[rename_prefix(key, TOP_RENAMES)] = tensor
            continue
        block = match.group(1) + "." + match.group(2)
        rest = match.group(3)
        if rest == "attention.qkv.weight":
            kv = (tensor.shape[0] - hidden) // 2
            q, k, v = tensor.split([hidden, kv, kv], dim=0)
            converted[f"{block}.attn.to_q.weight"] = q
            converted[f"{block}.attn.to_k.weight"] = k
            converted[f"{block}.attn.to_v.weight"] = v
            continue
        if rest.startswith("attention_norm1."):
            target = "norm1.norm." if block in modulated_blocks else "norm1."
            rest = target + rest[len("attention_norm1.") :]
        else:
            rest = rename_prefix(rest, BLOCK_RENAMES)
        converted[f"{block}.{rest}"] = tensor
    return converted


def _count_blocks(state: dict, prefix: str) -> int:
    indices = {int(m.group(2)) for k in state if (m := BLOCK_KEY.match(k)) and m.group(1) == prefix}
    return max(indices) + 1 if indices else 0


def derive_config(state: dict[str, Tensor], patch_size: int = 2) -> NextDiTConfig:
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
    except (ValueError, IndexError, ZeroDivisionError):  # a tensor of the wrong rank, or empty
        raise ModelLoadError("The checkpoint's tensors do not have the shapes of a Lumina-Image 2.0 DiT.") from None
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


class HeaderTensor:
    """A tensor known only by its safetensors header entry: its shape, and how it splits."""

    def __init__(self, shape):
        self.shape = tuple(int(n) for n in shape)

    def split(self, sizes: list[int], dim: int = 0) -> list[HeaderTensor]:
        return [HeaderTensor(self.shape[:dim] + (n,) + self.shape[dim + 1:]) for n in sizes]

    def numel(self) -> int:
        return prod(self.shape)


def header_tensors(file: Path) -> dict[str, HeaderTensor]:
    """A .safetensors DiT checkpoint's tensors in diffusers layout, from its header alone (an all-in-one file's
    text encoder and VAE left out)."""
    try:
        tensors = {name: HeaderTensor(entry["shape"]) for name, entry in safetensors_header(file).items()}
    except (KeyError, TypeError, ValueError):
        raise ModelLoadError(f"{file} is not a readable .safetensors file (a tensor entry has no shape).") from None
    try:
        return to_diffusers_layout(tensors)
    except IndexError:  # a fused qkv of no rank
        raise ModelLoadError(f"{file}: its tensors do not have the shapes of a Lumina-Image 2.0 DiT.") from None


def known_architecture(source: ModelSource) -> NextDiTConfig | None:
    """The DiT's architecture from its folder's config.json or its .safetensors header, without torch;
    None for a pickled (.pth) file, whose tensors only torch can list."""
    if not source.is_single_file:
        return folder_config(source.dit)
    if source.dit.suffix.lower() == ".safetensors":
        return derive_config(header_tensors(source.dit))
    return None
