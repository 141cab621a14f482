"""Exponential moving average of the DiT's weights (what the authors release and what samples use).

The average is kept per process for the parameters that process holds: the whole model with one
process or DDP, its own shards under FSDP (DTensor parameters). Full weights are gathered only to
sample or to save a model folder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor; a collective under FSDP (every process must call it)."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


class EMA:
    """fp32, beside the weights, or in the computer's memory when `device` is the CPU (memory.ema_on_cpu)."""

    def __init__(self, model: torch.nn.Module, decay: float, device: torch.device | None = None):
        self.decay = decay
        self.device = device
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        self.shadow = [p.detach().to(device, torch.float32, copy=True) for _, p in self._params(model)]
        self.sharded = any(hasattr(p, "to_local") for p in self.shadow)

    def _params(self, model):
        wanted = set(self.names)
        return [(n, p) for n, p in model.named_parameters() if n in wanted]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        # each to its average's device: a swapped block's weights are on the CPU, the rest may be on the GPU
        params = [p.detach().to(s.device, torch.float32) for s, (_, p) in zip(self.shadow, self._params(model))]
        torch._foreach_lerp_(self.shadow, params, 1 - self.decay)

    def full_state(self, prefix_to_drop: str = "") -> dict[str, torch.Tensor]:
        """Every averaged weight, whole, on the CPU (collective under FSDP)."""
        return {name.removeprefix(prefix_to_drop): full_tensor(t).cpu() for name, t in zip(self.names, self.shadow)}

    def file_name(self, rank: int) -> str:
        return f"ema-rank{rank}.safetensors" if self.sharded else "ema.safetensors"

    def save(self, folder: Path, rank: int) -> None:
        if self.sharded or rank == 0:
            tensors = {name: _local(t).contiguous().cpu() for name, t in zip(self.names, self.shadow)}
            save_file(tensors, str(folder / self.file_name(rank)))

    @torch.no_grad()
    def load(self, folder: Path, rank: int) -> None:
        saved = load_file(str(folder / self.file_name(rank)))
        for name, tensor in zip(self.names, self.shadow):
            _local(tensor).copy_(saved[name])
