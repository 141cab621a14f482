"""Sample images during training, made with the same sampler and defaults as Generate.

Runs on the main process with the averaged weights; the sample prompts' caption features were
pre-computed with the others, so no text encoder is loaded here. The VAE (small) is loaded on first use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.backends.denoiser import StagedDenoiser
from core.backends.torch_backend import TorchStages
from core.generation.engine import sample_latent
from core.metadata import FORMAT, a1111_parameters, png_info
from core.models import loader
from core.models.nextdit import NextDiT, NextDiTConfig
from core.generation.prompt_encoder import EncodedPrompt
from core.generation.request import GenerationRequest
from core.storage import write_atomic

from .config import SamplesConfig


class SampleMaker:
    def __init__(self, components: Path, settings: SamplesConfig, device: torch.device, dtype: torch.dtype):
        self.components = components
        self.settings = settings
        self.device = device
        self.dtype = dtype
        self.shift = loader.default_shift(components)
        self.model_defaults = loader.sampling_defaults(components)  # what Generate uses with this model
        self._vae = None

    @property
    def vae(self):
        if self._vae is None:
            self._vae = loader.load_vae(self.components, torch.float32, torch.device("cpu"))
        return self._vae

    @torch.no_grad()
    def make(self, weights: dict[str, torch.Tensor], config: NextDiTConfig, prompts: list[tuple[str, torch.Tensor]],
             negative: torch.Tensor, size: tuple[int, int], folder: Path, step: int | None,
             stem: str | None = None, model_name: str | None = None, rows: list[int] | None = None) -> list[Path]:
        """One image per (prompt, caption features) at size (width, height), named `{stem}-{row}.png` (stem:
        `step-NNNNNNNN`) and drawn with seed + row, rows 0, 1, ... unless `rows` says which they are; returns the
        files written. `step` None: the base model (`model_name` names it).

        Sampled by Generate's own path (`sample_latent`) with the model's own defaults (as Generate would) unless
        the config's [samples] sets them, and saved with Generate's metadata, so a sample's settings load into
        Generate like any image's."""
        with torch.device("meta"):
            model = NextDiT(config)
        model.load_state_dict({k: v.to(self.device, self.dtype) for k, v in weights.items()}, assign=True)
        model.eval()
        stages = TorchStages(model)
        width, height = size
        written = []
        negative_prompt = _encoded(negative)
        model_info = {"name": model_name or f"training step {step}", "hash": ""}
        stem = stem or f"step-{step:08d}"
        chosen = self.settings
        for index, (text, features) in zip(rows or range(len(prompts)), prompts):
            seed = chosen.seed + index
            request = GenerationRequest(text, negative_prompt=chosen.negative_prompt, width=width, height=height,
                                        steps=chosen.steps, guidance=chosen.guidance, cfg_trunc=chosen.cfg_trunc,
                                        cfg_renorm=chosen.cfg_renorm, solver=chosen.solver, seed=seed,
                                        shift=self.shift).with_defaults(self.shift, max(size), self.model_defaults)
            denoiser = StagedDenoiser(stages, _encoded(features), negative_prompt, (height // 8, width // 8),
                                      batch_cfg=False)
            image = self._decode(sample_latent(denoiser, request, seed, config.in_channels, self.device))
            settings = {**request.to_dict(), "system_prompt_text": request.system_prompt_text}
            record = {"format": FORMAT, "settings": settings, "model": model_info, "run": {"training_step": step}}
            info = png_info(a1111_parameters(settings, model_info), record)
            path = folder / f"{stem}-{index}.png"
            write_atomic(path, lambda handle, image=image, info=info: image.save(handle, format="PNG", pnginfo=info))
            written.append(path)
        return written

    def _decode(self, latent: torch.Tensor) -> Image.Image:
        self._vae = self.vae.to(self.device)
        pixels = loader.decode_latent(self._vae, latent.float())
        self._vae = self._vae.to("cpu")
        return Image.fromarray((pixels * 255).round().astype(np.uint8))

def _encoded(features: torch.Tensor) -> EncodedPrompt:
    return EncodedPrompt(features=features[None].float(), token_count=features.shape[0], truncated_text="")
