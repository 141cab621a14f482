"""Train a small 8x-downsampling AutoencoderKL on a set of images (the demo model's VAE).

Reconstruction (mean squared error) of the posterior mean, plus a small KL term that keeps the latent
bounded.
Afterwards the latent's mean and spread over the training images become the VAE's shift_factor and
scaling_factor, so scaled latents have zero mean and unit variance, the convention the DiT expects.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from tqdm import tqdm

KL_WEIGHT = 1e-5


def images_to_tensor(images) -> torch.Tensor:
    """PIL images -> (N, 3, H, W) in [-1, 1]."""
    array = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


def train_vae(vae, images: torch.Tensor, steps: int, batch: int = 32, lr: float = 2e-3, seed: int = 0) -> list[float]:
    """Trains `vae` in place on `images` ((N, 3, H, W) in [-1, 1]); returns the loss per step."""
    generator = torch.Generator().manual_seed(seed)
    vae.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.05)
    losses = []
    for _ in tqdm(range(steps), desc="training the VAE", unit="step", file=sys.stderr):
        x = images[torch.randint(len(images), (batch,), generator=generator)]
        posterior = vae.encode(x).latent_dist
        # The mean, not a sample: with a fresh encoder's unit variance the noise drowns colour for
        # thousands of steps. Encoding uses the mean too (mode), so decoding sees what it trained on.
        reconstruction = vae.decode(posterior.mean).sample
        loss = torch.nn.functional.mse_loss(reconstruction, x) + KL_WEIGHT * posterior.kl().mean() / x[0].numel()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    vae.eval().requires_grad_(False)
    return losses


@torch.no_grad()
def fit_latent_scale(vae, images: torch.Tensor, batch: int = 256) -> tuple[float, float]:
    """Sets shift_factor / scaling_factor from the latents of `images`; returns (shift, scale)."""
    latents = torch.cat([vae.encode(images[i : i + batch]).latent_dist.mode() for i in range(0, len(images), batch)])
    shift, scale = float(latents.mean()), float(1.0 / latents.std())
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    return shift, scale


@torch.no_grad()
def reconstruction_error(vae, images: torch.Tensor) -> float:
    """Mean absolute error in 8-bit pixel levels after encode (mode) and decode."""
    decoded = vae.decode(vae.encode(images).latent_dist.mode()).sample.clamp(-1, 1)
    return float((decoded - images).abs().mean() * 127.5)
