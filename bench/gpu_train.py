"""GPU benchmark: full fine-tuning steps of the 2.6B Next-DiT (random weights) on one GPU.

Exactly the trainer's step (trainer/loop.py): accelerate with bf16 mixed precision, fp32 master
weights, AdamW (the authors' settings), gradient clipping, EMA update, activation checkpointing on
every joint block, the flow-matching loss with the pooled term. Inputs are random latents and
128-token caption features (speed does not depend on their values). For 512x512 and 1024x1024 it
reports samples/s, achieved TFLOP/s (model FLOPs: 3x a forward pass, recomputation not counted),
MFU against the bf16 matmul peak measured on this GPU in the same run, peak memory, and our memory
estimate beside it. Writes $OUT/gpu_train.json (or bench/out/) and prints a table last.

    python bench/gpu_train.py             # on the GPU machine
    python bench/gpu_train.py --modes     # each memory mode at 1024x1024, micro-batch 1: peak memory, s/step
    python bench/gpu_train.py --small     # the same code on a CPU with a small configuration
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_backends import SMALL, pass_flops, sync  # noqa: E402

from core.models.nextdit import NextDiT, NextDiTConfig  # noqa: E402
from trainer.config import parse_config  # noqa: E402
from trainer.ema import EMA  # noqa: E402
from trainer.low_memory import fuse_backward, training_optimizer  # noqa: E402
from trainer.block_swap import BlockSwap  # noqa: E402
from trainer.memory import MEMORY_MODES, estimate_stage, mode_label, optimizer_bytes, parameter_count  # noqa: E402
from trainer.objective import flow_matching_loss, noisy_inputs  # noqa: E402

CAPTION_TOKENS = 128


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int) -> float:
    """Achieved TFLOP/s of large square matmuls: the practical peak MFU is measured against."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    repeats = 20 if device.type == "cuda" else 3
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e12


def train_steps(config: NextDiTConfig, resolution: int, micro_batch: int, steps: int, warmup: int, device,
                run=None):
    """Median seconds per step and peak GiB (CUDA) of the trainer's step in `run`'s memory settings (a RunConfig;
    None: today's)."""
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision="bf16" if device.type == "cuda" else "no", cpu=device.type == "cpu")
    run = run or parse_config(run_config_for(resolution, micro_batch))
    memory = run.memory
    torch.manual_seed(0)
    with torch.device(device):  # built where it trains, in its dtype: no fp32 copy of bf16 weights on the way
        torch.set_default_dtype(torch.bfloat16 if memory.weights == "bf16" else torch.float32)
        model = NextDiT(config).train()
        torch.set_default_dtype(torch.float32)
    model.activation_checkpointing = True
    optimizer = training_optimizer(model, run)
    model, optimizer = accelerator.prepare(model, optimizer)
    norms: list[float] = []
    inner = accelerator.unwrap_model(model)
    swap = BlockSwap(list(inner.layers)[-memory.blocks_to_swap:], device) if memory.blocks_to_swap else None
    if memory.fused_backward:
        fuse_backward(inner, optimizer.optimizer, 2.0, norms, swap)
    ema = EMA(accelerator.unwrap_model(model), 0.95, torch.device("cpu") if memory.ema_on_cpu else None)
    dtype = next(model.parameters()).dtype
    latent = resolution // 8
    latents = torch.randn(micro_batch, config.in_channels, latent, latent, device=device)
    features = torch.randn(micro_batch, CAPTION_TOKENS, config.cap_feat_dim, device=device, dtype=dtype)
    mask = torch.ones(micro_batch, CAPTION_TOKENS, dtype=torch.long, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    durations = []
    for step in range(warmup + steps):
        sync(device)
        started = time.perf_counter()
        if run.steps_one_by_one:
            optimizer.optimizer.set_seed(step)
        x_t, t, target = noisy_inputs(latents, torch.Generator().manual_seed(step))
        loss = flow_matching_loss(model(x_t.to(dtype), t, features, mask).float(), target, 1.0)
        accelerator.backward(loss)
        if not memory.fused_backward:
            accelerator.clip_grad_norm_(model.parameters(), 2.0)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(accelerator.unwrap_model(model))
        sync(device)
        durations.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    del model, optimizer, ema
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    durations = sorted(durations[warmup:])
    return durations[len(durations) // 2], peak


SWAPPED = 18  # joint blocks the block-swapping mode swaps here: what 8 GB needs at 1024², micro-batch 1


def run_config_for(resolution: int, micro_batch: int, memory: dict | None = None, optimizer: str = "adamw") -> dict:
    return {"version": 1, "base_model": "m", "datasets": [{"path": "d"}], "memory": memory or {},
            "optimizer": {"name": optimizer}, "stages": [{"name": str(resolution), "resolution": resolution,
                                                          "steps": 1, "batch_size": micro_batch,
                                                          "micro_batch_size": micro_batch}]}


def memory_modes(config: NextDiTConfig, resolution: int, micro_batch: int, steps: int, warmup: int, device) -> list:
    """Every memory mode of trainer/memory.py at one size: peak memory and speed beside the estimate."""
    params = parameter_count(config)
    rows = []
    for mode in MEMORY_MODES:
        swapped = min(SWAPPED, config.num_layers - 1)
        swapping = {"blocks_to_swap": swapped} if mode.memory.get("blocks_to_swap") else {}
        run = parse_config(run_config_for(resolution, micro_batch, {**mode.memory, **swapping}, mode.optimizer))
        seconds, peak_gib = train_steps(config, resolution, micro_batch, steps, warmup, device, run)
        estimate = estimate_stage(config, params, run, run.stages[0], 1, False, 2,
                                  optimizer_state=optimizer_bytes(config, mode.optimizer))
        rows.append({"mode": mode_label(run), "seconds_per_step": seconds, "peak_memory_gib": peak_gib,
                     "estimated_memory_gib": estimate.total / 2**30})
        print(f"{rows[-1]['mode']:58} {seconds:7.3f} s/step  peak {peak_gib or 0:6.1f} GiB  "
              f"estimate {rows[-1]['estimated_memory_gib']:6.1f} GiB", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", action="store_true", help="small configuration (CPU check of this script)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", default="512:16,1024:4", help="resolution:micro_batch pairs")
    parser.add_argument("--modes", metavar="RESOLUTION:MICRO_BATCH", nargs="?", const="1024:1",
                        help="instead: every memory mode at this size (default 1024:1), peak memory and speed")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = NextDiTConfig(**SMALL) if args.small else NextDiTConfig()
    runs = [(256, 2)] if args.small else [tuple(map(int, pair.split(":"))) for pair in args.runs.split(",")]
    peak = matmul_peak(device, torch.bfloat16 if device.type == "cuda" else torch.float32,
                       8192 if device.type == "cuda" else 1024)
    params = parameter_count(config)
    out = Path(os.environ.get("OUT", Path(__file__).parent / "out"))
    out.mkdir(parents=True, exist_ok=True)
    if args.modes:
        resolution, micro_batch = (256, 1) if args.small else map(int, args.modes.split(":"))
        rows = memory_modes(config, resolution, micro_batch, args.steps, args.warmup, device)
        result = {"date": time.strftime("%Y-%m-%d"), "device": device_name(device), "parameters": params,
                  "versions": {"torch": torch.__version__, "cuda": torch.version.cuda}, "resolution": resolution,
                  "micro_batch": micro_batch, "caption_tokens": CAPTION_TOKENS, "modes": rows}
        (out / "gpu_train_modes.json").write_text(json.dumps(result, indent=2))
        return
    rows = []
    for resolution, micro_batch in runs:
        image_tokens = (resolution // 16) ** 2
        seconds, peak_gib = train_steps(config, resolution, micro_batch, args.steps, args.warmup, device)
        flops = 3 * pass_flops(config, image_tokens, CAPTION_TOKENS) * micro_batch
        run_config = parse_config(run_config_for(resolution, micro_batch))
        estimate = estimate_stage(config, params, run_config, run_config.stages[0], 1, False, 2)
        rows.append({
            "resolution": resolution, "micro_batch": micro_batch, "seconds_per_step": seconds,
            "samples_per_s": micro_batch / seconds, "tflops": flops / seconds / 1e12,
            "mfu": flops / seconds / 1e12 / peak, "peak_memory_gib": peak_gib,
            "estimated_memory_gib": estimate.total / 2**30,
        })
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "device": device_name(device),
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda},
        "parameters": params, "measured_matmul_peak_tflops": peak, "caption_tokens": CAPTION_TOKENS, "runs": rows,
    }
    (out / "gpu_train.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"\nmatmul peak {peak:.1f} TFLOP/s on {result['device']}")
    print(f"{'size':>6}{'batch':>7}{'s/step':>9}{'samples/s':>11}{'TFLOP/s':>9}{'MFU':>7}{'peak GiB':>10}{'est GiB':>9}")
    for r in rows:
        print(f"{r['resolution']:>6}{r['micro_batch']:>7}{r['seconds_per_step']:>9.3f}{r['samples_per_s']:>11.2f}"
              f"{r['tflops']:>9.1f}{r['mfu']:>7.1%}{r['peak_memory_gib'] or 0:>10.1f}{r['estimated_memory_gib']:>9.1f}")


if __name__ == "__main__":
    main()
