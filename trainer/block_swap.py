"""Block swapping, the last resort for small GPUs: the weights of the last N joint blocks live in the computer's
memory (pinned, so copies to the GPU run asynchronously), and so do their optimizer states.

A swapped block is copied to the GPU just before its forward pass and dropped from it right after; with
activation checkpointing its forward pass runs again in the backward pass, so it is copied in again there and
stays until each of its weights has its gradient. The fused backward pass then steps that weight where it
lives, on the CPU (its gradient is copied there first), and the GPU copy is gone. So the GPU holds the other
blocks and one swapped block at a time; the cost is two copies of each swapped block per step over PCIe and its
optimizer step on the CPU. It needs the fused backward pass and activation checkpointing (trainer/config.py
says so), and one process.
"""

from __future__ import annotations

import torch


def in_backward_pass() -> bool:
    """Whether autograd is running a backward pass now (a checkpointed block is being recomputed)."""
    return torch._C._current_graph_task_id() != -1


class BlockSwap:
    def __init__(self, blocks: list[torch.nn.Module], device: torch.device):
        self.device = device
        self.home: dict[torch.nn.Parameter, torch.Tensor] = {}  # each swapped weight's own tensor, on the CPU
        self.copies_in = 0  # blocks copied to the device (a block is twice per training step)
        for block in blocks:
            for p in block.parameters():
                home = p.data.to("cpu")
                self.home[p] = home.pin_memory() if device.type == "cuda" else home
                p.data = self.home[p]
            block.register_forward_pre_hook(self._bring)
            block.register_forward_hook(self._after_forward)

    def _bring(self, block: torch.nn.Module, args) -> None:
        for p in block.parameters():
            if p.data.device != self.device:
                p.data = self.home[p].to(self.device, non_blocking=True)
        self.copies_in += 1

    def _after_forward(self, block: torch.nn.Module, args, output) -> None:
        if not in_backward_pass():  # recomputed in the backward pass: its gradients still need the weights
            for p in block.parameters():
                p.data = self.home[p]

    def send_home(self, p: torch.nn.Parameter) -> None:
        """A swapped weight with its gradient goes back to the CPU to be stepped there (fused backward pass)."""
        grad, p.grad = p.grad, None
        p.data = self.home[p]
        p.grad = grad.to(p.data.device)

    def __contains__(self, p: torch.nn.Parameter) -> bool:
        return p in self.home
