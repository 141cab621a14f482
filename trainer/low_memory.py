"""Training in less memory: bf16 weights updated with stochastic rounding, one parameter at a time, and a
fused backward pass.

bf16 weights without an fp32 master copy lose every update smaller than half a bf16 step (about 1/256 of the
weight), which late in a fine-tune is most of them. Stochastic rounding rounds each new value up or down at
random, with the probability that keeps it right on average, so small updates add up as they should
(tests/trainer/test_low_memory.py shows both). The optimizer's maths runs in fp32 for one parameter at a time
(a transient fp32 copy of that tensor), so no fp32 copy of the model ever exists.

The fused backward pass steps each parameter as soon as its gradient is complete (a post-accumulate-grad
hook) and frees that gradient, so the whole set of gradients never lives at once. Two things need every
gradient first, so they cannot go with it: clipping by the global gradient norm (each parameter's gradient is
clipped by its own norm instead) and accumulating gradients over micro-batches (refused: set
micro_batch_size = batch_size).
"""

from __future__ import annotations

import torch

def stochastic_round_(target: torch.Tensor, source: torch.Tensor, generator: torch.Generator | None = None) -> None:
    """Write fp32 `source` into bf16 `target`, each value rounded up or down at random in proportion to how near
    it lies (bf16 keeps the upper 16 bits of an fp32: random lower bits are added, then cut off)."""
    bits = source.detach().to(torch.float32).contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, dtype=torch.int32, device=bits.device, generator=generator)
    target.copy_(((bits + noise) & -65536).view(torch.float32))


def make_optimizer(name: str, params, lr: float, betas, eps: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adafactor":  # factored second moment: a row and a column per matrix, no first moment
        return torch.optim.Adafactor(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


class OneByOne(torch.optim.Optimizer):
    """An optimizer per parameter, stepped one at a time, its maths in fp32 (its states are fp32: Adafactor's
    are a row and a column per matrix). A bf16 parameter is copied to fp32 for its step and rounded back
    stochastically. `param_groups` holds one group per parameter, so a learning-rate change reaches them all;
    `state_dict` holds each one's state, in parameter order, for a checkpoint."""

    def __init__(self, params, name: str, lr: float, betas=(0.9, 0.95), eps: float = 1e-15,
                 weight_decay: float = 0.0):
        params = [p for p in params if p.requires_grad]
        super().__init__(params, {"lr": lr})
        self.inners = [make_optimizer(name, [p], lr, betas, eps, weight_decay) for p in params]
        self.param_groups = [inner.param_groups[0] for inner in self.inners]
        self.index = {p: i for i, p in enumerate(params)}
        self.generator: torch.Generator | None = None  # set per step (set_seed): the rounding is repeatable

    def set_seed(self, seed: int, device: torch.device) -> None:
        self.generator = torch.Generator(device=device).manual_seed(seed)

    @torch.no_grad()
    def step_parameter(self, p: torch.nn.Parameter) -> None:
        inner = self.inners[self.index[p]]
        if p.dtype == torch.float32:
            inner.step()
            return
        weights, grad = p.data, p.grad
        p.data = weights.float()
        p.grad = grad.float()
        try:
            inner.step()
            stochastic_round_(weights, p.data, self.generator)
        finally:
            p.data = weights
            p.grad = grad

    def step(self, closure=None):  # noqa: D102 - every parameter with a gradient
        for p in self.index:
            if p.grad is not None:
                self.step_parameter(p)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.index:
            p.grad = None

    def state_dict(self) -> dict:
        return {"parameters": [inner.state_dict() for inner in self.inners]}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict.get("parameters") if isinstance(state_dict, dict) else None
        if not isinstance(saved, list) or len(saved) != len(self.inners):
            raise ValueError("the optimizer state was saved by another memory mode or model; resume the run in "
                             "the mode it was started with")
        for (p, index), state in zip(self.index.items(), saved):
            weights = p.data  # torch casts loaded states to the parameter's dtype: they stay fp32, as saved
            p.data = weights.float()
            try:
                self.inners[index].load_state_dict(state)
            finally:
                p.data = weights


def fuse_backward(model: torch.nn.Module, optimizer: OneByOne, clip: float, norms: list[float]) -> list:
    """Step each parameter in the backward pass as soon as its gradient is complete, its gradient clipped by
    its own norm to `clip`, then freed; each squared norm is appended to `norms` (for the logged gradient
    norm). Returns the hook handles."""

    def step(p: torch.nn.Parameter) -> None:
        norm = torch.linalg.vector_norm(p.grad.float())
        norms.append(float(norm) ** 2)
        if norm > clip:
            p.grad.mul_(clip / (norm + 1e-6))
        optimizer.step_parameter(p)
        p.grad = None

    return [p.register_post_accumulate_grad_hook(step) for p in model.parameters() if p.requires_grad]
