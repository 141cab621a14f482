"""Sample images during training, made with the same sampler and defaults as Generate.

Runs on the main process with the averaged weights; the sample prompts' caption features were
pre-computed with the others, so no text encoder is loaded here. The VAE (small) is loaded on first use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from core.backends.denoiser import StagedDenoiser
from core.backends.torch_backend import TorchStages
from core.models import loader
from core.models.nextdit import NextDiT, NextDiTConfig
from core.prompt_encoder import EncodedPrompt
from core.request import DEFAULTS
from core.sampling.guidance import OfficialGuidance
from core.sampling.sampler import sample
from core.sampling.schedule import official_grid
from core.sampling.solvers import make_solver

from .config import SamplesConfig


class SampleMaker:
    def __init__(self, components: Path, settings: SamplesConfig, device: torch.device, dtype: torch.dtype):
        self.components = components
        self.settings = settings
        self.device = device
        self.dtype = dtype
        self.shift = loader.default_shift(components)
        self._vae = None

    @property
    def vae(self):
        if self._vae is None:
            self._vae = loader.load_vae(self.components, torch.float32, torch.device("cpu"))
        return self._vae

    @torch.no_grad()
    def make(self, weights: dict[str, torch.Tensor], config: NextDiTConfig, prompts: list[tuple[str, torch.Tensor]],
             negative: torch.Tensor, size: tuple[int, int], folder: Path, step: int) -> list[Path]:
        """One image per (prompt, caption features) at size (width, height); returns the files written."""
        with torch.device("meta"):
            model = NextDiT(config)
        model.load_state_dict({k: v.to(self.device, self.dtype) for k, v in weights.items()}, assign=True)
        model.eval()
        stages = TorchStages(model)
        defaults = DEFAULTS["official"]
        guidance = OfficialGuidance(self.settings.guidance, defaults["cfg_trunc"], defaults["cfg_renorm"])
        width, height = size
        latent_size = (height // 8, width // 8)
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        negative_prompt = _encoded(negative)
        for index, (text, features) in enumerate(prompts):
            denoiser = StagedDenoiser(stages, _encoded(features), negative_prompt, latent_size, batch_cfg=False)
            generator = torch.Generator("cpu").manual_seed(self.settings.seed + index)
            noise = torch.randn((1, config.in_channels, *latent_size), generator=generator).to(self.device)
            latent = sample(denoiser, noise, official_grid(self.settings.steps, self.shift),
                            make_solver(defaults["solver"]), guidance)
            image = self._decode(latent)
            info = PngImagePlugin.PngInfo()
            info.add_itxt("parameters", f"{text}\nSteps: {self.settings.steps}, Sampler: {defaults['solver']}, "
                                        f"CFG scale: {self.settings.guidance}, Seed: {self.settings.seed + index}, "
                                        f"Size: {width}x{height}, Training step: {step}")
            path = folder / f"step-{step:08d}-{index}.png"
            temp = path.with_name(f".{path.name}.tmp")
            image.save(temp, format="PNG", pnginfo=info)
            temp.replace(path)
            written.append(path)
        return written

    def _decode(self, latent: torch.Tensor) -> Image.Image:
        self._vae = self.vae.to(self.device)
        pixels = loader.decode_latent(self._vae, latent.float())
        self._vae = self._vae.to("cpu")
        return Image.fromarray((pixels * 255).round().astype(np.uint8))

def _encoded(features: torch.Tensor) -> EncodedPrompt:
    return EncodedPrompt(features=features[None].float(), token_count=features.shape[0], truncated_text="")
