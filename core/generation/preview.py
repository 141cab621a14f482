"""Cheap live previews: a linear map from latent channels to RGB, fitted to the model's own VAE.

Fitting once per model (encode a few images of random 8x8 colour blocks, least squares from each latent
pixel to its block's colour) works for any VAE, the FLUX one and the tests' tiny one alike, and then a
preview costs one small matrix product per step, with no VAE decode.
"""

from __future__ import annotations

import numpy as np
import torch


class LatentPreviewer:
    def __init__(self, weights: torch.Tensor, bias: torch.Tensor):
        self.weights = weights  # (C, 3)
        self.bias = bias  # (3,)

    @classmethod
    @torch.no_grad()
    def fit(cls, vae, images: int = 8, blocks: int = 8, seed: int = 0) -> LatentPreviewer:
        generator = torch.Generator().manual_seed(seed)
        colours = torch.rand(images, 3, blocks, blocks, generator=generator) * 2 - 1
        pixels = colours.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)
        from ..models.loader import encode_pixels

        latents = encode_pixels(vae, pixels).cpu()
        x = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
        x = torch.cat([x, torch.ones(x.shape[0], 1)], dim=1)
        y = colours.permute(0, 2, 3, 1).reshape(-1, 3)
        solution = torch.linalg.lstsq(x.double(), y.double()).solution.float()
        return cls(solution[:-1], solution[-1])

    def __call__(self, latent: torch.Tensor) -> np.ndarray:
        """(1, C, h, w) latent -> (h, w, 3) uint8 RGB."""
        rgb = latent[0].float().cpu().permute(1, 2, 0) @ self.weights + self.bias
        return ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
