"""Classifier-free guidance with truncation and renormalisation, in two dialects.

Official (the authors' `forward_with_cfg`): guidance while t < trunc (a time on the t axis); after that
only the conditional pass runs. renorm > 0 caps ||v|| (L2 over C,H,W per sample) at renorm * ||v_cond||.

diffusers (`Lumina2Pipeline`): guidance while (i + 1) / N <= trunc_ratio (a fraction of steps) and the
scale is above 1; normalisation rescales v to ||v_cond|| along the last axis (each latent row).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class OfficialGuidance:
    scale: float
    trunc: float
    renorm: float

    def uses_uncond(self, t: float, step: int, steps: int) -> bool:
        # scale 1 gives v_cond exactly (and renorm never clips it), so the pass is skipped.
        return self.scale != 1.0 and t < self.trunc

    def combine(self, v_cond: torch.Tensor, v_uncond: torch.Tensor) -> torch.Tensor:
        guided = v_uncond + self.scale * (v_cond - v_uncond)
        if self.renorm <= 0:
            return guided
        dims = tuple(range(1, guided.ndim))
        cap = torch.linalg.vector_norm(v_cond, dim=dims, keepdim=True) * self.renorm
        norm = torch.linalg.vector_norm(guided, dim=dims, keepdim=True)
        # No host sync: the clamp is a tensor select, applied per sample.
        return torch.where(norm >= cap, guided * (cap / norm), guided)


@dataclass(frozen=True)
class DiffusersGuidance:
    scale: float
    trunc_ratio: float
    normalize: bool

    def uses_uncond(self, t: float, step: int, steps: int) -> bool:
        return self.scale > 1.0 and not (step + 1) / steps > self.trunc_ratio

    def combine(self, v_cond: torch.Tensor, v_uncond: torch.Tensor) -> torch.Tensor:
        guided = v_uncond + self.scale * (v_cond - v_uncond)
        if not self.normalize:
            return guided
        cond_norm = torch.norm(v_cond, dim=-1, keepdim=True)
        return guided * (cond_norm / torch.norm(guided, dim=-1, keepdim=True))
