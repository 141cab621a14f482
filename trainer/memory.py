"""A per-stage estimate of training memory per GPU, printed before launch.

Static: fp32 weights (4 bytes per parameter), fp32 gradients (4), AdamW's two moments (8), the EMA
copy (4), all divided by the process count under FSDP full sharding; the memory settings change them: bf16
weights and gradients (2 + 2), no gradients held with the fused backward pass, Adafactor's factored moment
(a row and a column per matrix), 8-bit AdamW's moments (two bytes a weight), the EMA in the computer's memory.
Activations at the micro-batch (activation_estimate): what a block keeps per token is counted from the model's
code and held to saved-tensor hooks by a test; with activation checkpointing each joint block keeps only its
input and one block's inside is live at a time (attention through SDPA keeps no L x L matrix); bf16 autocast
over fp32 weights adds a bf16 copy of the weights during the forward pass. Allocator slack and the CUDA
context come on top (+1.5 GB is added for them).

Torch is imported only to count a built model's parameters and ask CUDA for its GPUs: the Train tab's
wizard estimates from a model's config.json and safetensors header, without torch. On the CPU the estimate
(no CUDA overhead) is held against the computer's memory, shared by the processes.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, replace

from core.models.nextdit_config import NextDiTConfig
from core.storage import human_size

from .config import MemoryConfig, RunConfig, StageConfig

CUDA_OVERHEAD = int(1.5 * 2**30)
# torchao's 8-bit AdamW quantizes tensors of 4096 values or more, in blocks of 256 with an fp32 scale each.
EIGHT_BIT_MIN, EIGHT_BIT_BLOCK = 4096, 256
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


def block_parameter_count(config: NextDiTConfig) -> int:
    """One joint (modulated) block's weights, counted from core/models/nextdit.py's Block (a test holds it to
    the module): attention (q, k, v, out, the q/k norms), the SwiGLU FFN, the modulation and four norms."""
    dim, head = config.hidden_size, config.head_dim
    attention = dim * head * (2 * config.num_attention_heads + 2 * config.num_kv_heads) + 2 * head
    return attention + 3 * dim * config.ffn_inner_dim + config.time_embed_dim * 4 * dim + 4 * dim + 4 * dim


def optimizer_bytes(model: NextDiTConfig, name: str) -> int:
    """The optimizer's state for the whole model, from its parameter shapes: AdamW two fp32 moments per weight;
    8-bit AdamW two bytes per weight of the tensors it quantizes (with an fp32 scale per block and a 256-entry
    code map per moment), fp32 for the small rest; Adafactor a row and a column per matrix (a vector: one per
    weight); and each tensor's step count."""
    shapes = parameter_shapes(model)
    if name == "adafactor":
        return 4 * sum(math.prod(s[:-1]) + math.prod(s[:-2]) * s[-1] + 1 if len(s) >= 2 else math.prod(s) + 1
                       for s in shapes)
    if name == "adamw8bit":
        return sum(2 * (n + 4 * n // EIGHT_BIT_BLOCK + 4 * 256) + 4 if n >= EIGHT_BIT_MIN and n % EIGHT_BIT_BLOCK == 0
                   else 8 * n + 4 for n in (math.prod(s) for s in shapes))
    return sum(8 * math.prod(s) + 4 for s in shapes)


def block_activation_bytes(model: NextDiTConfig, activation_bytes: int) -> int:
    """Bytes one transformer block keeps per token for its backward pass, counted from core/models/nextdit.py's
    Block (a test holds it to saved-tensor hooks): 18 hidden-wide tensors (the norms' inputs and outputs, the
    projections' inputs, q, attention's output), 4 K/V-wide (k and v, before and after RoPE and norm), 3 FFN-wide
    (the SwiGLU halves and their product); the RMS norms and the SiLU work in fp32, so under bf16 they keep fp32
    copies of their inputs (5 hidden-wide, 1 K/V-wide, the SiLU's FFN-wide one always), and a few numbers per head."""
    h, f, d = model.hidden_size, model.ffn_inner_dim, activation_bytes
    kv = model.num_kv_heads * model.head_dim
    fp32_copies = 4 * (5 * h + kv) if d < 4 else 0
    return d * (18 * h + 4 * kv + 3 * f) + 4 * f + fp32_copies + 4 * (4 + 2 * model.num_attention_heads
                                                                        + model.num_kv_heads)


def activation_estimate(model: NextDiTConfig, resolution: int, micro_batch: int, checkpointing: bool,
                        activation_bytes: int, caption_tokens: int = CAPTION_TOKENS) -> tuple[int, int]:
    """(kept, peak): what the forward pass keeps for the backward pass, and the most live at once, the backward
    pass's working set added: one block's recomputed inside (with checkpointing) and the gradients flowing
    through one block. The noise refiner runs on the image tokens, the context refiner on the caption's, the final
    layer on the image's; the joint blocks on both; with checkpointing each joint block keeps only its input."""
    image = micro_batch * (resolution // 16) ** 2
    caption = micro_batch * caption_tokens
    block = block_activation_bytes(model, activation_bytes)
    refiners = model.num_refiner_layers * block * (image + caption)
    refiners += 4 * model.hidden_size * activation_bytes * image  # and the final layer's norm and projection
    joint = image + caption
    if checkpointing:
        kept = model.num_layers * joint * model.hidden_size * activation_bytes + refiners
        return kept, kept + 2 * joint * block
    kept = model.num_layers * joint * block + refiners
    return kept, kept + joint * block


def estimate_stage(model: NextDiTConfig, params: int, run: RunConfig, stage: StageConfig, processes: int,
                   sharded: bool, activation_bytes: int, cuda: bool = True,
                   optimizer_state: int | None = None) -> MemoryEstimate:
    """`optimizer_state`: optimizer_bytes() where torch may be imported; else it is estimated from `params`."""
    share = processes if sharded else 1
    kept, peak = activation_estimate(model, stage.resolution, stage.micro_batch_size, run.activation_checkpointing,
                                     activation_bytes)
    # bf16 autocast over fp32 weights keeps a bf16 copy of each weight until the forward pass ends
    casts = 2 * params // share if activation_bytes < 4 and run.memory.weights == "fp32" else 0
    activations = max(kept + casts, peak)
    memory = run.memory
    weight_bytes = 2 if memory.weights == "bf16" else 4
    if optimizer_state is not None:
        optimizer = optimizer_state
    elif run.optimizer.name == "adafactor":  # about a row and a column per (hidden x hidden) matrix, fp32
        optimizer = 4 * 2 * params // model.hidden_size
    elif run.optimizer.name == "adamw8bit":  # two bytes and two blocks' scales per weight
        optimizer = 2 * params + 8 * params // EIGHT_BIT_BLOCK
    else:  # AdamW's two fp32 moments (kept fp32 for bf16 weights too)
        optimizer = 8 * params
    ema_here = run.ema_decay > 0 and not (memory.ema_on_cpu and cuda)  # on the CPU it is the same memory
    # swapped blocks' weights and optimizer states are in the computer's memory; one is on the GPU at a time
    away = block_parameter_count(model) * max(0, memory.blocks_to_swap - 1) if cuda else 0
    return MemoryEstimate(
        stage=stage.name,
        weights=weight_bytes * (params - away) // share,
        gradients=0 if memory.fused_backward else weight_bytes * params // share,  # fused: one tensor at a time
        optimizer=optimizer * (params - away) // params // share,
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


OPTIMIZER_LABELS = {"adamw": "AdamW", "adamw8bit": "8-bit AdamW", "adafactor": "Adafactor"}


def mode_label(run: RunConfig) -> str:
    """A run's memory settings in words, e.g. "bf16 weights, Adafactor, fused backward, EMA on the CPU"."""
    memory = run.memory
    parts = [f"{memory.weights} weights", OPTIMIZER_LABELS[run.optimizer.name]]
    if memory.fused_backward:
        parts.append("fused backward")
    if memory.blocks_to_swap:
        parts.append(f"{memory.blocks_to_swap} block{'s' if memory.blocks_to_swap > 1 else ''} swapped to the CPU")
    if run.ema_decay > 0:
        parts.append("EMA on the CPU" if memory.ema_on_cpu else "EMA")  # else beside the weights
    return ", ".join(parts)


@dataclass(frozen=True)
class MemoryMode:
    memory: dict  # [memory] settings
    optimizer: str  # [optimizer] name
    cost: str  # what it costs against today's settings, in quality and speed


# The memory modes, from the least costly in quality and speed to the lightest (trainer/low_memory.py;
# bench/RESULTS.md, bench_quality.py and bench_memory.py measure them).
MEMORY_MODES = (
    MemoryMode({}, "adamw", "today's settings: the reference"),
    MemoryMode({"weights": "bf16", "ema_on_cpu": True}, "adamw",
               "bf16 weights with stochastic rounding: the loss within 0.3% of today's on the demo; the EMA is "
               "copied to the computer's memory every step (slower over a slow PCIe link)"),
    MemoryMode({"weights": "bf16", "ema_on_cpu": True}, "adamw8bit",
               "8-bit moments: the loss within 0.3% of today's on the demo; a slower optimizer step"),
    MemoryMode({"weights": "bf16", "ema_on_cpu": True}, "adafactor",
               "a factored second moment and no momentum: the loss within 1.1% of today's on the demo"),
    MemoryMode({"weights": "bf16", "ema_on_cpu": True, "fused_backward": True}, "adamw8bit",
               "no gradient accumulation: a step per micro-batch (a smaller batch, a noisier step)"),
    MemoryMode({"weights": "bf16", "ema_on_cpu": True, "fused_backward": True}, "adafactor",
               "Adafactor, and no gradient accumulation (a step per micro-batch)"),
    MemoryMode({"weights": "bf16", "ema_on_cpu": True, "fused_backward": True, "blocks_to_swap": 1}, "adafactor",
               "the lightest: as above, with joint blocks in the computer's memory (as few as fit), copied to the "
               "GPU twice a step and stepped on the CPU: slower by those copies (not yet measured on a GPU)"),
)


@dataclass
class ModeFit:
    mode: MemoryMode
    run: RunConfig  # the config in this mode, its stages' batches changed where the mode needs it
    need: int  # the largest stage's estimate, bytes
    fits: bool

    @property
    def label(self) -> str:
        return mode_label(self.run)


def mode_changes(trial: RunConfig, original: RunConfig) -> str:
    """What a mode changed in the config besides its memory settings, in words ("" when nothing did)."""
    switched_on = trial.activation_checkpointing and not original.activation_checkpointing
    said = ["activation checkpointing on"] if switched_on else []
    said += [f"stage '{stage.name}': batch {stage.batch_size}, micro-batch {stage.micro_batch_size}"
             for before, stage in zip(original.stages, trial.stages)
             if (before.batch_size, before.micro_batch_size) != (stage.batch_size, stage.micro_batch_size)]
    return "; ".join(said)


def in_mode(run: RunConfig, mode: MemoryMode, micro_batch: int | None = None,
            checkpointing: bool = False) -> RunConfig:
    """`run` in `mode`, each stage's micro-batch `micro_batch` if given (the batch is kept: gradients are
    accumulated), activation checkpointing switched on if asked; the fused backward pass cannot accumulate, so
    there each batch is its micro-batch."""
    fused = mode.memory.get("fused_backward", False)
    stages = []
    for stage in run.stages:
        micro = min(micro_batch or stage.micro_batch_size, stage.micro_batch_size)
        stages.append(replace(stage, micro_batch_size=micro, batch_size=micro if fused else stage.batch_size))
    return replace(run, stages=stages, memory=MemoryConfig(**mode.memory),
                   optimizer=replace(run.optimizer, name=mode.optimizer),
                   activation_checkpointing=run.activation_checkpointing or checkpointing)


def mode_fits(model: NextDiTConfig, params: int, run: RunConfig, gpu_size: int, optimizer_state=None) -> list[ModeFit]:
    """Every memory mode on one GPU of `gpu_size` bytes: as the config is, or else with activation checkpointing
    on (slower), or else at micro-batch 1 too (slower still, the same batch by accumulation).
    `optimizer_state(name)` counts exactly where torch may be imported."""
    fits = []
    for listed in MEMORY_MODES:
        state = optimizer_state(listed.optimizer) if optimizer_state else None
        for mode in _swap_counts(listed, model):
            swapping = bool(mode.memory.get("blocks_to_swap"))
            for micro, checkpointing in ((None, swapping), (None, True), (1, True)):  # swapping recomputes
                trial = in_mode(run, mode, micro, checkpointing)
                need = max(estimate_stage(model, params, trial, stage, 1, False, 2, optimizer_state=state).total
                           for stage in trial.stages)
                if need <= gpu_size:
                    break
            if need <= gpu_size:
                break
        fits.append(ModeFit(mode, trial, need, need <= gpu_size))
    return fits


def _swap_counts(mode: MemoryMode, model: NextDiTConfig) -> list[MemoryMode]:
    """A mode that swaps blocks, with 2, 3, ... of the model's joint blocks swapped (the fewest that fit wins; one
    saves nothing: a swapped block is on the GPU while it runs); any other mode as it is."""
    if not mode.memory.get("blocks_to_swap"):
        return [mode]
    return [replace(mode, memory={**mode.memory, "blocks_to_swap": n}) for n in range(2, model.num_layers)]


def mode_settings(fit: ModeFit, original: RunConfig) -> str:
    """The config lines that choose this mode (JSON writes TOML's strings and booleans alike)."""
    lines = [f'[optimizer] name = "{fit.mode.optimizer}"']
    lines += [f"[memory] {key} = {json.dumps(value)}" for key, value in fit.mode.memory.items()]
    changes = mode_changes(fit.run, original)
    return ", ".join(lines) + (f"; and {changes}" if changes else "")


def describe_fits(fits: list[ModeFit], original: RunConfig, gpu_size: int) -> list[str]:
    """One line per mode: whether it fits, its estimate, what else changes and what it costs."""
    lines = []
    for fit in fits:
        changes = mode_changes(fit.run, original)
        lines.append(f"{'fits' if fit.fits else 'too big'}: {fit.label}: about {human_size(fit.need)} of "
                     f"{human_size(gpu_size)}{f' ({changes})' if changes else ''}; {fit.mode.cost}")
    return lines


def lighter_settings(model: NextDiTConfig, params: int, run: RunConfig, gpu_size: int,
                     optimizer_state=None) -> str:
    """For one GPU too small for `run`: the least costly memory mode that fits it, as the config lines to set
    (with the estimate), or why none does."""
    fit = next((f for f in mode_fits(model, params, run, gpu_size, optimizer_state) if f.fits), None)
    if fit is None:
        return (f"no memory mode fits {human_size(gpu_size)} (the lightest needs more, estimated): lower the "
                "stages' resolution, or use a larger GPU or several")
    return (f"{fit.label} would fit (about {human_size(fit.need)} of {human_size(gpu_size)}, estimated): "
            + mode_settings(fit, run))


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
