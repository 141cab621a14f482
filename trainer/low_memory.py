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

import contextlib
import os

import torch

from .memory import EIGHT_BIT_BLOCK


def stochastic_round_(target: torch.Tensor, source: torch.Tensor, generator: torch.Generator | None = None) -> None:
    """Write fp32 `source` into bf16 `target`, each value rounded up or down at random in proportion to how near
    it lies (bf16 keeps the upper 16 bits of an fp32: random lower bits are added, then cut off)."""
    bits = source.detach().to(torch.float32).contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, dtype=torch.int32, device=bits.device, generator=generator)
    target.copy_(((bits + noise) & -65536).view(torch.float32))


def make_optimizer(name: str, params, lr: float, betas, eps: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adafactor":  # factored second moment: a row and a column per matrix, no first moment
        return torch.optim.Adafactor(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw8bit":  # both moments in 8 bits (blockwise), from torchao: small, runs on CPU and CUDA
        from torchao.optim import AdamW8bit

        return AdamW8bit(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                         block_size=EIGHT_BIT_BLOCK)
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def adafactor_lr_scale(p: torch.Tensor) -> float:
    """torch's Adafactor moves a weight by lr times the weight's own RMS (at least 1e-3): dividing the stage's
    rate by that RMS at the start makes its steps the size AdamW's are at the same rate, so one recipe serves
    both."""
    return 1.0 / max(1e-3, p.detach().float().square().mean().sqrt().item())


@contextlib.contextmanager
def eager_steps_on_cpu(name: str, p: torch.Tensor):
    """torchao compiles its 8-bit step per weight shape: worth it on a GPU; on the CPU it needs a C++ compiler
    and seconds per shape, so there it runs eagerly (a CPU run trains a small model). Other optimizers: as is."""
    if name != "adamw8bit" or p.device.type != "cpu" or os.environ.get("TORCHDYNAMO_DISABLE") == "1":
        yield
        return
    os.environ["TORCHDYNAMO_DISABLE"] = "1"
    try:
        yield
    finally:
        del os.environ["TORCHDYNAMO_DISABLE"]


def training_optimizer(model: torch.nn.Module, run) -> torch.optim.Optimizer:
    """The optimizer a run's settings ask for (a RunConfig): torch's AdamW over the whole model for today's
    settings, else one per weight (OneByOne), at the first stage's rate."""
    opt, lr = run.optimizer, run.stages[0].lr
    if run.steps_one_by_one:
        return OneByOne(model.parameters(), opt.name, lr, opt.betas, opt.eps, opt.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=tuple(opt.betas), eps=opt.eps,
                             weight_decay=opt.weight_decay)


class OneByOne(torch.optim.Optimizer):
    """An optimizer per parameter, stepped one at a time, its maths in fp32 (its states are fp32, or 8-bit:
    Adafactor's are a row and a column per matrix). A bf16 parameter is copied to fp32 for its step and rounded
    back stochastically. `param_groups` holds one group per parameter (its `lr` is what the loop sets; Adafactor's
    `lr_scale` evens out its relative steps); `state_dict` holds each one's state, in parameter order."""

    def __init__(self, params, name: str, lr: float, betas=(0.9, 0.95), eps: float = 1e-15,
                 weight_decay: float = 0.0):
        params = [p for p in params if p.requires_grad]
        super().__init__([{"params": [p]} for p in params], {"lr": lr})
        self.name = name
        self.inners = [make_optimizer(name, [p], lr, betas, eps, weight_decay) for p in params]
        for group, p in zip(self.param_groups, params):
            group["lr_scale"] = adafactor_lr_scale(p) if name == "adafactor" else 1.0
        self.index = {p: i for i, p in enumerate(params)}
        self.seed: int | None = None  # set per step (set_seed): the rounding is repeatable
        self.generators: dict[str, torch.Generator] = {}  # one per device the weights live on

    def set_seed(self, seed: int) -> None:
        self.seed, self.generators = seed, {}

    def generator(self, device: torch.device) -> torch.Generator | None:
        """The rounding's random numbers where a weight lives (a swapped block's weights are on the CPU)."""
        if self.seed is None:
            return None
        if device.type not in self.generators:
            self.generators[device.type] = torch.Generator(device=device).manual_seed(self.seed)
        return self.generators[device.type]

    def _set_inner_lr(self, index: int) -> None:
        group = self.param_groups[index]
        inner = self.inners[index].param_groups[0]
        value = group["lr"] * group["lr_scale"]
        if torch.is_tensor(inner["lr"]):  # torchao keeps its rate as a tensor (its compiled step reads it)
            inner["lr"].fill_(value)
        else:
            inner["lr"] = value

    @torch.no_grad()
    def step_parameter(self, p: torch.nn.Parameter) -> None:
        index = self.index[p]
        self._set_inner_lr(index)
        inner = self.inners[index]
        with eager_steps_on_cpu(self.name, p):
            if p.dtype == torch.float32:
                inner.step()
                return
            weights, grad = p.data, p.grad
            p.data = weights.float()
            p.grad = grad.float()
            try:
                inner.step()
                stochastic_round_(weights, p.data, self.generator(weights.device))
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
        return {"optimizer": self.name, "lr_scales": [group["lr_scale"] for group in self.param_groups],
                "parameters": [inner.state_dict() for inner in self.inners]}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict.get("parameters") if isinstance(state_dict, dict) else None
        if not isinstance(saved, list) or len(saved) != len(self.inners) or state_dict.get("optimizer") != self.name:
            raise ValueError("the optimizer state was saved by another optimizer, memory mode or model; resume "
                             "the run with the settings it was started with")
        for group, scale in zip(self.param_groups, state_dict.get("lr_scales") or []):
            group["lr_scale"] = float(scale)  # the scales of the run's start, not of today's weights
        for (p, index), state in zip(self.index.items(), saved):
            weights = p.data  # torch casts loaded states to the parameter's dtype: they stay fp32, as saved
            p.data = weights.float()
            try:
                self.inners[index].load_state_dict(state)
            finally:
                p.data = weights


def fuse_backward(model: torch.nn.Module, optimizer: OneByOne, clip: float, norms: list[float],
                  swap=None) -> list:
    """Step each parameter in the backward pass as soon as its gradient is complete, its gradient clipped by
    its own norm to `clip`, then freed; each squared norm is appended to `norms` (for the logged gradient
    norm). A swapped block's weight (`swap`, trainer/block_swap.py) is stepped where it lives, on the CPU.
    Returns the hook handles."""

    def step(p: torch.nn.Parameter) -> None:
        norm = torch.linalg.vector_norm(p.grad.float())
        norms.append(float(norm) ** 2)
        if norm > clip:
            p.grad.mul_(clip / (norm + 1e-6))
        if swap is not None and p in swap:
            swap.send_home(p)
        optimizer.step_parameter(p)
        p.grad = None

    return [p.register_post_accumulate_grad_hook(step) for p in model.parameters() if p.requires_grad]
