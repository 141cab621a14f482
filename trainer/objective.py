"""The authors' training objective: flow matching with a velocity target.

x_t = t * x_data + (1 - t) * noise (t = 0 is noise, t = 1 data, as at inference); the model predicts
v = x_data - noise. t is drawn from a logit-normal (sigmoid of a standard normal) and shifted towards
noise for larger images, FLUX-style: mu grows linearly with the image token count (256 -> 0.5,
4096 -> 1.15) and t' = t / (s - (s - 1) t) with s = e^mu, which is FLUX's shift of sigma = 1 - t.
An optional extra loss compares the prediction and the target average-pooled by 4 (the paper's
multi-scale loss), which weighs low frequencies (layout, colour) more.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PATCH_PIXELS = 2  # latent pixels per patch side


def resolution_shift(latent_height: int, latent_width: int) -> float:
    tokens = (latent_height // PATCH_PIXELS) * (latent_width // PATCH_PIXELS)
    mu = 0.5 + (1.15 - 0.5) * (tokens - 256) / (4096 - 256)
    return math.exp(mu)


def sample_times(batch: int, shift: float, generator: torch.Generator) -> torch.Tensor:
    t = torch.sigmoid(torch.randn(batch, generator=generator))
    return t / (shift - (shift - 1) * t)


def flow_matching_loss(prediction: torch.Tensor, target: torch.Tensor, pooled_weight: float) -> torch.Tensor:
    loss = F.mse_loss(prediction, target)
    if pooled_weight > 0 and min(target.shape[-2:]) >= 4:
        loss = loss + pooled_weight * F.mse_loss(F.avg_pool2d(prediction, 4), F.avg_pool2d(target, 4))
    return loss


def noisy_inputs(latents: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, t, velocity target) for a batch of clean latents, drawn from `generator` (CPU, reproducible)."""
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    t = sample_times(latents.shape[0], resolution_shift(*latents.shape[-2:]), generator).to(latents.device)
    t_view = t.view(-1, 1, 1, 1)
    return t_view * latents + (1 - t_view) * noise, t, latents - noise
