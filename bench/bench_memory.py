"""CPU: peak memory of training steps in each memory setting (trainer/low_memory.py), on a ~250M-parameter
model of Lumina's shape (hidden 1152, 8 joint blocks, 12 heads of 96 and RoPE as the 2.6B release), random weights,
micro-batch 1 at 256x256 with 128 caption tokens, activation checkpointing on. Each setting runs in a fresh
process; its peak RSS (the process's whole memory: Python, torch, the model, its gradients, optimizer state,
EMA and activations) is set beside today's default as the 1.00x reference, and beside the trainer's own
estimate of the static part.

    python bench/bench_memory.py [--steps 3]        (writes bench/out/bench_memory.json)
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results import save_results  # noqa: E402

SHAPE = dict(hidden_size=1152, num_layers=8, num_attention_heads=12, num_kv_heads=4, cap_feat_dim=1152)  # head 96, as 2.6B
SETTINGS = {  # label: ([memory], [optimizer], EMA)
    "today: fp32 weights, AdamW, EMA": ({}, {}, True),
    "bf16 weights, AdamW, EMA": ({"weights": "bf16"}, {}, True),
    "bf16 weights, 8-bit AdamW, EMA": ({"weights": "bf16"}, {"name": "adamw8bit"}, True),
    "bf16 weights, Adafactor, EMA": ({"weights": "bf16"}, {"name": "adafactor"}, True),
    "bf16 weights, 8-bit AdamW, fused backward, EMA": ({"weights": "bf16", "fused_backward": True},
                                                       {"name": "adamw8bit"}, True),
    "bf16 weights, Adafactor, fused backward, EMA": ({"weights": "bf16", "fused_backward": True},
                                                     {"name": "adafactor"}, True),
    "bf16 weights, Adafactor, fused backward, no EMA": ({"weights": "bf16", "fused_backward": True},
                                                        {"name": "adafactor"}, False),
}

STEPS = """
import json, resource, sys, time
import torch
sys.path.insert(0, sys.argv[1])
from core.models.nextdit import NextDiT, NextDiTConfig
from trainer.ema import EMA
from trainer.low_memory import OneByOne, fuse_backward
shape, memory, optimizer, with_ema, steps = json.loads(sys.argv[2])
torch.manual_seed(0)
config = NextDiTConfig(**shape)
dtype = torch.bfloat16 if memory.get("weights") == "bf16" else torch.float32
torch.set_default_dtype(dtype)  # built in its dtype, as the trainer loads it: no fp32 copy at the start
model = NextDiT(config).train()
torch.set_default_dtype(torch.float32)
model.activation_checkpointing = True
if memory or optimizer:
    opt = OneByOne(model.parameters(), optimizer.get("name", "adamw"), lr=1e-5)
    opt.set_seed(0)
else:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), eps=1e-15)
if memory.get("fused_backward"):
    fuse_backward(model, opt, clip=2.0, norms=[])
ema = EMA(model, 0.95) if with_ema else None
seconds = []
for step in range(steps):
    started = time.perf_counter()
    x = torch.randn(1, 16, 32, 32, dtype=dtype)
    features = torch.randn(1, 128, config.cap_feat_dim, dtype=dtype)
    loss = model(x, torch.rand(1), features, torch.ones(1, 128, dtype=torch.long)).float().square().mean()
    loss.backward()
    if not memory.get("fused_backward"):
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
    opt.zero_grad(set_to_none=True)
    if ema is not None:
        ema.update(model)
    seconds.append(time.perf_counter() - started)
print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                  "seconds_per_step": sorted(seconds)[len(seconds) // 2],
                  "parameters": sum(p.numel() for p in model.parameters())}))
"""


def static_estimate(memory: dict, optimizer: dict, with_ema: bool) -> int:
    from core.models.nextdit_config import NextDiTConfig
    from trainer.config import parse_config
    from trainer.memory import estimate_stage, optimizer_bytes, parameter_count

    config = NextDiTConfig(**SHAPE)
    run = parse_config({"version": 1, "base_model": "x", "datasets": [{"path": "x"}], "memory": memory,
                        "optimizer": optimizer, "ema_decay": 0.95 if with_ema else 0.0,
                        "stages": [{"name": "s", "resolution": 256, "steps": 1, "batch_size": 1,
                                    "micro_batch_size": 1}]})
    e = estimate_stage(config, parameter_count(config), run, run.stages[0], 1, False, 4, cuda=False,
                       optimizer_state=optimizer_bytes(config, run.optimizer.name))
    return e.weights + e.gradients + e.optimizer + e.ema


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    import torch

    results = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                          f"torch {torch.__version__}, Python {platform.python_version()}", "shape": SHAPE,
               "settings": {}}
    for label, (memory, optimizer, with_ema) in SETTINGS.items():
        spec = json.dumps([SHAPE, memory, optimizer, with_ema, args.steps])
        measured = json.loads(subprocess.run([sys.executable, "-c", STEPS, str(ROOT), spec], capture_output=True,
                                             text=True, check=True).stdout)
        measured["static_estimate_mib"] = static_estimate(memory, optimizer, with_ema) // 2**20
        results["settings"][label] = measured
        print(label, measured, flush=True)
    reference = next(iter(results["settings"].values()))["peak_rss_mib"]
    for measured in results["settings"].values():
        measured["ratio"] = round(measured["peak_rss_mib"] / reference, 3)
    save_results("bench_memory", results)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
