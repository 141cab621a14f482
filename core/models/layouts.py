"""The key layouts a Lumina-Image 2.0 DiT checkpoint comes in, recognised from tensor names alone.

No torch here: the app checks a file a person adds from safetensors headers, without loading weights.
Layouts: diffusers (`time_caption_embed.*`), the authors' original (`cap_embedder.*`, fused `qkv`), and
ComfyUI (the original under `model.diffusion_model.`, possibly beside `text_encoders.` and `vae.`).
"""

from __future__ import annotations

from collections.abc import Collection

from ..errors import ModelLoadError

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
