"""The validation loss: the training objective on held-out images with fixed noise and fixed timesteps, so
one set of weights always gives the same number and two checkpoints differ only by their weights.

Each image is noised at 8 timesteps, the quantiles of the training distribution (logit-normal, shifted for
its size as training shifts it), with noise drawn from a generator seeded by the run's seed and the image's
path; its first caption is the condition (no dropout). The loss is the mean of the training loss over every
(image, timestep) pair, at the stage's resolution: numbers of different resolutions are not compared.
"""

from __future__ import annotations

import contextlib
import hashlib

import torch

from .datasets import VALIDATION_TIMESTEPS
from .features import FeatureCache
from .objective import flow_matching_loss, resolution_shift


def validation_times(latent_height: int, latent_width: int) -> torch.Tensor:
    quantiles = (torch.arange(VALIDATION_TIMESTEPS, dtype=torch.float64) + 0.5) / VALIDATION_TIMESTEPS
    t = torch.sigmoid(torch.special.ndtri(quantiles))
    shift = resolution_shift(latent_height, latent_width)
    return (t / (shift - (shift - 1) * t)).float()


def image_noise(seed: int, image: str, shape: torch.Size) -> torch.Tensor:
    """One noise per timestep, the same for an image every time it is validated."""
    digest = hashlib.sha256(f"{seed}\0{image}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.randn((VALIDATION_TIMESTEPS, *shape), generator=generator)


@torch.no_grad()
def validation_loss(model, cache: FeatureCache, entries: list[dict], seed: int, chunk: int, device: torch.device,
                    dtype: torch.dtype, pooled_loss_weight: float) -> float:
    """The mean loss over `entries` (a stage manifest's "validation"), `chunk` timesteps per forward pass."""
    total, count = 0.0, 0
    for entry in entries:
        latent = cache.load_latent(entry["latent"]).float()
        features = cache.load_text(entry["texts"][0])
        times = validation_times(*latent.shape[-2:])
        noise = image_noise(seed, entry["image"], latent.shape)
        for start in range(0, VALIDATION_TIMESTEPS, chunk):
            t, n = times[start:start + chunk], noise[start:start + chunk]
            t_view = t.view(-1, 1, 1, 1)
            x_t = t_view * latent + (1 - t_view) * n
            batch = len(t)
            prediction = model(x_t.to(device, dtype), t.to(device), features.expand(batch, -1, -1).to(device, dtype),
                               torch.ones(batch, features.shape[0], dtype=torch.long, device=device))
            loss = flow_matching_loss(prediction.float(), (latent - n).to(device), pooled_loss_weight)
            total += float(loss) * batch
            count += batch
    return total / count


@contextlib.contextmanager
def weights_in(model: torch.nn.Module, weights: dict[str, torch.Tensor]):
    """The model holds `weights` (the EMA a checkpoint saves) inside the block, its own again after it. The two
    trade places one tensor at a time: meanwhile `weights` holds the model's own (on the CPU), so the GPU holds
    one model and the computer no third copy (a 2.6B model's is 5-10 GB). `weights` is used up."""
    parameters = dict(model.named_parameters())
    swapped = []
    with torch.no_grad():
        try:
            for name, parameter in parameters.items():
                if name in weights:
                    own = parameter.detach().to("cpu", copy=True)
                    parameter.copy_(weights[name].to(parameter.device, parameter.dtype))
                    weights[name] = own
                    swapped.append(name)
            yield model
        finally:
            for name in swapped:
                parameters[name].copy_(weights[name].to(parameters[name].device))
