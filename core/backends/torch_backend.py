"""The PyTorch backend: NextDiT's stages, run eagerly."""

from __future__ import annotations

import torch

from ..models.nextdit import Conditioning, NextDiT


class TorchStages:
    name = "torch"

    def __init__(self, model: NextDiT):
        self.model = model

    def prepare(self, features, mask, latent_size) -> Conditioning:
        return self.model.prepare(features, mask, latent_size)

    def embed(self, x, t, cond, with_signal: bool):
        hidden, temb = self.model.embed(x.to(self.model.device), t.to(self.model.device), cond)
        signal = self.model.modulated_input(hidden, temb) if with_signal else None
        return hidden, temb, signal

    def joint(self, hidden, temb, cond) -> torch.Tensor:
        return self.model.joint_blocks(hidden, temb, cond)

    def final(self, hidden, temb, cond) -> torch.Tensor:
        return self.model.final(hidden, temb, cond)
