"""Load the parts of a Lumina-Image 2.0 model: the DiT (our NextDiT), Gemma-2, tokenizer, VAE (each our own
module on the released weights; see gemma2.py and vae.py for why)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ModelLoadError
from .checkpoints import read_state_dict
from .layouts import derive_config, known_architecture, to_diffusers_layout
from .nextdit import NextDiT, NextDiTConfig
from .nextdit_config import folder_config
from .gemma2 import Gemma2Encoder, load_gemma2_encoder
from .sources import ModelSource, read_json_file, transformer_weight_files
from .tokenizer import PromptTokenizer
from .vae import Autoencoder, load_vae_folder

DEFAULT_SHIFT = 6.0


# ---- the DiT -----------------------------------------------------------------------------------


def dit_config(source: ModelSource) -> NextDiTConfig:
    """The DiT's architecture without building it: a folder's config, or what a single file's tensors say."""
    return known_architecture(source) or derive_config(to_diffusers_layout(read_state_dict(source.dit)))


def load_dit(source: ModelSource, dtype: torch.dtype, device: torch.device) -> NextDiT:
    if source.is_single_file:
        state = to_diffusers_layout(read_state_dict(source.dit))
        config = derive_config(state)
    else:
        config = folder_config(source.dit)
        state = {}
        for file in transformer_weight_files(source.dit):
            state.update(read_state_dict(file))
        state = to_diffusers_layout(state)
    with torch.device("meta"):
        model = NextDiT(config)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise ModelLoadError(f"{source.dit}: the weights do not fit the Lumina-Image 2.0 DiT: {'; '.join(detail)}.")
    for key, tensor in state.items():
        wanted = expected[key].shape
        if tensor.shape != wanted:
            raise ModelLoadError(
                f"{source.dit}: tensor {key} has shape {tuple(tensor.shape)} but the architecture needs {tuple(wanted)}."
            )
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    model.load_state_dict(state, assign=True)
    return model.eval().requires_grad_(False)


# ---- text encoder, tokenizer, VAE, scheduler settings ---------------------------------------------


def load_tokenizer(components: Path) -> PromptTokenizer:
    return PromptTokenizer(components / "tokenizer")


def load_text_encoder(components: Path, dtype: torch.dtype, device: torch.device) -> Gemma2Encoder:
    return load_gemma2_encoder(components / "text_encoder", dtype, device)


def load_vae(components: Path, dtype: torch.dtype, device: torch.device) -> Autoencoder:
    return load_vae_folder(components / "vae", dtype, device)


@torch.no_grad()
def decode_latent(vae: Autoencoder, latent: torch.Tensor):
    """Scaled latent (1, C, h, w) -> (H, W, 3) float32 numpy pixels in [0, 1], on the VAE's device."""
    param = next(vae.parameters())
    unscaled = latent / vae.config.scaling_factor + vae.config.shift_factor
    image = vae.decode(unscaled.to(param.device, param.dtype))
    return (image[0].float() / 2 + 0.5).clamp(0, 1).permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def encode_pixels(vae: Autoencoder, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels (B, 3, H, W) in [-1, 1] -> scaled float32 latents (the distribution's mean), as the DiT sees them."""
    param = next(vae.parameters())
    latent = vae.encode_mode(pixels.to(param.device, param.dtype)).float()
    return (latent - vae.config.shift_factor) * vae.config.scaling_factor


def default_shift(components: Path) -> float:
    """The model's inference time shift (scheduler_config.json `shift`), 6.0 when absent."""
    path = components / "scheduler" / "scheduler_config.json"
    if not path.exists():
        return DEFAULT_SHIFT
    return float(read_json_file(path).get("shift", DEFAULT_SHIFT))


SAMPLING_DEFAULTS_FILE = "sampling_defaults.json"  # in a diffusers folder, beside model_index.json
SAMPLING_KEYS = ("steps", "solver", "cfg_trunc", "cfg_renorm")


def sampling_defaults(components: Path) -> dict:
    """The model's own sampling defaults (sampling_defaults.json: any of steps, solver, cfg_trunc,
    cfg_renorm), which replace the authors' for this model where a request leaves them unset; {} if none."""
    from ..errors import LuminaError
    from ..generation.request import GenerationRequest

    path = components / SAMPLING_DEFAULTS_FILE
    if not path.exists():
        return {}
    values = read_json_file(path)
    unknown = sorted(set(values) - set(SAMPLING_KEYS)) if isinstance(values, dict) else ["(not an object)"]
    try:
        if unknown:
            raise ModelLoadError(f"unknown keys {', '.join(unknown)}; allowed: {', '.join(SAMPLING_KEYS)}")
        GenerationRequest("check", **values).validate()
    except LuminaError as error:
        raise ModelLoadError(f"{path} is not usable: {error} Fix or delete the file.") from error
    return values
