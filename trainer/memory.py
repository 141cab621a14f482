"""A per-stage estimate of training memory per GPU, printed before launch.

Static: fp32 weights (4 bytes per parameter), fp32 gradients (4), AdamW's two moments (8), the EMA
copy (4), all divided by the process count under FSDP full sharding; the memory settings change them: bf16
weights and gradients (2 + 2), no gradients held with the fused backward pass, Adafactor's factored moment
(a row and a column per matrix), the EMA in the computer's memory. Activations at the micro-batch:
with activation checkpointing each joint block keeps only its input and one block's inside is live at a
time; without it every block keeps its inside. The inside of a block is counted as ~10 hidden-width
and 3 FFN-width tensors per token (attention through SDPA keeps no L x L matrix). It is an estimate,
good to about 20%: allocator slack and CUDA context come on top (+1.5 GB is added for them).

Torch is imported only to count a built model's parameters and ask CUDA for its GPUs: the Train tab's
wizard estimates from a model's config.json and safetensors header, without torch. On the CPU the estimate
(no CUDA overhead) is held against the computer's memory, shared by the processes.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass

from core.models.nextdit_config import NextDiTConfig
from core.storage import human_size

from .config import MemoryConfig, RunConfig, StageConfig

CUDA_OVERHEAD = int(1.5 * 2**30)
CAPTION_TOKENS = 256


@dataclass
class MemoryEstimate:
    stage: str
    weights: int
    gradients: int
    optimizer: int
    ema: int
    activations: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.ema + self.activations + self.overhead

    def describe(self) -> str:
        parts = ", ".join(f"{name} {human_size(getattr(self, name))}"
                          for name in ("weights", "gradients", "optimizer", "ema", "activations"))
        return f"stage '{self.stage}': about {human_size(self.total)} per process ({parts})"


@functools.cache
def parameter_shapes(config: NextDiTConfig) -> tuple[tuple[int, ...], ...]:
    """Every weight tensor's shape, from the model built on the meta device (no memory; once per config)."""
    import torch

    from core.models.nextdit import NextDiT

    with torch.device("meta"):
        return tuple(tuple(p.shape) for p in NextDiT(config).parameters())


def parameter_count(config: NextDiTConfig) -> int:
    return sum(math.prod(shape) for shape in parameter_shapes(config))


def optimizer_bytes(model: NextDiTConfig, name: str) -> int:
    """The optimizer's fp32 state for the whole model, from its parameter shapes: AdamW two moments per
    weight; Adafactor a row and a column per matrix (a vector: one per weight); and each tensor's step count."""
    shapes = parameter_shapes(model)
    if name == "adafactor":
        elements = sum(math.prod(s[:-1]) + math.prod(s[:-2]) * s[-1] if len(s) >= 2 else math.prod(s) for s in shapes)
    else:
        elements = 2 * sum(math.prod(s) for s in shapes)
    return 4 * (elements + len(shapes))


def estimate_stage(model: NextDiTConfig, params: int, run: RunConfig, stage: StageConfig, processes: int,
                   sharded: bool, activation_bytes: int, cuda: bool = True,
                   optimizer_state: int | None = None) -> MemoryEstimate:
    """`optimizer_state`: optimizer_bytes() where torch may be imported; else it is estimated from `params`."""
    share = processes if sharded else 1
    tokens = (stage.resolution // 16) ** 2 + CAPTION_TOKENS
    per_token = activation_bytes * (10 * model.hidden_size + 3 * model.ffn_inner_dim)
    inside = stage.micro_batch_size * tokens * per_token
    block_input = stage.micro_batch_size * tokens * model.hidden_size * activation_bytes
    refiners = 2 * model.num_refiner_layers * inside  # not checkpointed (small)
    if run.activation_checkpointing:
        activations = model.num_layers * block_input + inside + refiners
    else:
        activations = model.num_layers * inside + refiners
    memory = run.memory
    weight_bytes = 2 if memory.weights == "bf16" else 4
    if optimizer_state is not None:
        optimizer = optimizer_state
    elif run.optimizer.name == "adafactor":  # about a row and a column per (hidden x hidden) matrix, fp32
        optimizer = 4 * 2 * params // model.hidden_size
    else:  # AdamW's two fp32 moments (kept fp32 for bf16 weights too)
        optimizer = 8 * params
    ema_here = run.ema_decay > 0 and not (memory.ema_on_cpu and cuda)  # on the CPU it is the same memory
    return MemoryEstimate(
        stage=stage.name,
        weights=weight_bytes * params // share,
        gradients=0 if memory.fused_backward else weight_bytes * params // share,  # fused: one tensor at a time
        optimizer=optimizer // share,
        ema=4 * params // share if ema_here else 0,
        activations=activations,
        overhead=CUDA_OVERHEAD if cuda else 0,
    )


def stage_estimates(model: NextDiTConfig, params: int, run: RunConfig, processes: int, device: str,
                    precision: str, optimizer_state: int | None = None) -> list[MemoryEstimate]:
    """Every stage's estimate for `processes` processes on `device` ("cuda" or "cpu"), `precision` "bf16" or
    "no" (fp32 activations)."""
    return [estimate_stage(model, params, run, stage, processes, sharded=device == "cuda" and processes > 1,
                           activation_bytes=2 if precision == "bf16" else 4, cuda=device == "cuda",
                           optimizer_state=optimizer_state)
            for stage in run.stages]


def gpu_memory() -> list[int]:
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())]


def ram_size() -> int:
    """This computer's memory in bytes, which CPU training processes share."""
    import psutil

    return psutil.virtual_memory().total


def check_ram(estimates: list[MemoryEstimate], processes: int, ram: int) -> list[str]:
    """Warnings for stages whose CPU processes (each holding the whole model) need more than the memory."""
    return [
        f"stage '{e.stage}' needs about {human_size(e.total * processes)} of memory ({processes} process(es)) "
        f"but this computer has {human_size(ram)}: lower micro_batch_size, keep activation_checkpointing on, "
        "or train on GPUs."
        for e in estimates if e.total * processes > ram
    ]


# Lower-memory settings to try, in order of what they cost (trainer/low_memory.py); each is the one before plus more.
LADDER = (
    ("bf16 weights, EMA on the CPU", {"weights": "bf16", "ema_on_cpu": True}, {}),
    ("bf16 weights, Adafactor, EMA on the CPU", {"weights": "bf16", "ema_on_cpu": True}, {"name": "adafactor"}),
    ("bf16 weights, Adafactor, fused backward, EMA on the CPU",
     {"weights": "bf16", "ema_on_cpu": True, "fused_backward": True}, {"name": "adafactor"}),
)


def lighter_settings(model: NextDiTConfig, params: int, run: RunConfig, gpu_size: int,
                     optimizer_state=None) -> str:
    """For one GPU too small for `run`: the first memory settings of LADDER that fit it, written as the config
    lines to add (with the estimate), or why none does. `optimizer_state(name)` counts exactly where torch
    may be imported."""
    from dataclasses import replace

    tries = [(label, memory, optimizer, None) for label, memory, optimizer in LADDER]
    tries.append((*tries[-1][:3], 1))  # the fused backward pass cannot accumulate: a batch of 1, if need be
    for label, memory, optimizer, batch in tries:
        fused = memory.get("fused_backward")
        stages = [replace(s, batch_size=batch or s.batch_size, micro_batch_size=batch or s.batch_size) if fused
                  else s for s in run.stages]  # fused: one micro-batch per step
        trial = replace(run, stages=stages, memory=MemoryConfig(**memory),
                        optimizer=replace(run.optimizer, **optimizer) if optimizer else run.optimizer)
        state = optimizer_state(trial.optimizer.name) if optimizer_state else None
        need = max(estimate_stage(model, params, trial, stage, 1, False, 2, optimizer_state=state).total
                   for stage in trial.stages)
        if need <= gpu_size:  # the settings as config lines (JSON writes TOML's strings and booleans alike)
            lines = [f"[{table}] {key} = {json.dumps(value)}" for table, values in (("optimizer", optimizer),
                                                                                  ("memory", memory))
                     for key, value in values.items()]
            extra = (f"; and batch_size = micro_batch_size = {batch} in every stage" if batch else
                     "; and micro_batch_size = batch_size in every stage" if fused else "")
            return (f"{label} would fit (about {human_size(need)} of {human_size(gpu_size)}, estimated): "
                    + ", ".join(lines) + extra)
    return (f"no memory setting fits {human_size(gpu_size)} (the lightest needs more, estimated): lower the "
            "stages' resolution or micro-batch, or use a larger GPU or several")


def check_fit(estimates: list[MemoryEstimate], gpu_sizes: list[int]) -> list[str]:
    """Warnings for stages that will not fit the smallest of these GPUs (bytes each)."""
    if not gpu_sizes:
        return []
    smallest = min(gpu_sizes)
    return [
        f"stage '{e.stage}' needs about {human_size(e.total)} per GPU but the smallest GPU has "
        f"{human_size(smallest)}: lower micro_batch_size, keep activation_checkpointing on, or use more GPUs "
        "(FSDP shards weights, gradients, optimizer and EMA across them)."
        for e in estimates if e.total > smallest
    ]
