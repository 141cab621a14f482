"""CPU: training steps per second through `lumina-studio train` vs a plain single-process PyTorch loop.

Same model folder, same pre-computed latents and caption features, same micro-batch, AdamW settings
and loss. The plain loop holds every input in memory and does nothing else (no EMA, no logging, no
file reads, no activation checkpointing); "trainer, like for like" switches EMA and activation
checkpointing off too, so the ratio between the two is our trainer's overhead. "trainer, defaults" is
what a person gets (EMA on, activation checkpointing on). Trainer speed is the median interval between
logged steps (after 5 warm-up steps), so process start-up and feature encoding are not counted.

    python bench/bench_train.py [--steps 30] [--size 128] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import tomli_w

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_generate import SPEC, cpu_name  # noqa: E402

from core.models.loader import load_dit  # noqa: E402
from core.models.scaffold import build_model_folder  # noqa: E402
from core.models.sources import resolve_source  # noqa: E402
from trainer.batches import StageData  # noqa: E402
from trainer.features import FeatureCache  # noqa: E402
from trainer.objective import flow_matching_loss, noisy_inputs  # noqa: E402
from trainer.events import Step, parse  # noqa: E402
from trainer.run_folder import RunFolder  # noqa: E402
from results import save_results  # noqa: E402

COLOURS = [(220, 30, 30), (30, 60, 220), (30, 170, 60), (240, 220, 40)]


def make_dataset(folder: Path, size: int, count: int = 32) -> Path:
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = Image.new("RGB", (size, size), (245, 245, 245))
        box = (size // 4 + i % 5, size // 4, 3 * size // 4, 3 * size // 4 - i % 7)
        (ImageDraw.Draw(image).ellipse if i % 2 else ImageDraw.Draw(image).rectangle)(box, fill=COLOURS[i % 4])
        image.save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(f"a {'circle' if i % 2 else 'square'} number {i} on a white background")
    return folder


def trainer_steps_per_second(work: Path, model: Path, data: Path, args, name: str, **settings) -> tuple[float, RunFolder]:
    config = {"version": 1, "name": name, "base_model": str(model), "datasets": [{"path": str(data)}],
              "stages": [{"name": "only", "resolution": args.size, "steps": args.steps, "batch_size": args.batch,
                          "micro_batch_size": args.batch, "lr": 1e-4, "caption_dropout": 0.1}], **settings}
    path = work / f"{name}.toml"
    path.write_text(tomli_w.dumps(config))
    run = RunFolder(work / name)
    subprocess.run([sys.executable, "-m", "lumina_studio", "train", str(path), "--run-dir", str(run.path)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    times = [r["time"] for r in run.read_events() if isinstance(parse(r), Step)]
    intervals = [b - a for a, b in zip(times[5:], times[6:])]
    return 1.0 / statistics.median(intervals), run


def plain_steps_per_second(model_folder: Path, run: RunFolder, args) -> float:
    """The reference: the same model, inputs and loss in the simplest loop PyTorch allows."""
    model = load_dit(resolve_source(model_folder), torch.float32, torch.device("cpu")).train().requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-15, weight_decay=0.0)
    cache = FeatureCache(run.path)
    data = StageData(cache, cache.manifest(0), args.batch, seed=0, stage_index=0)
    batches = [data.load(p, torch.Generator().manual_seed(p), 0.1) for p in range(data.batches_per_epoch)]
    durations = []
    for step in range(args.steps):
        latents, features, mask = batches[step % len(batches)]
        started = time.perf_counter()
        x_t, t, target = noisy_inputs(latents, torch.Generator().manual_seed(step))
        loss = flow_matching_loss(model(x_t, t, features, mask), target, 1.0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        durations.append(time.perf_counter() - started)
    return 1.0 / statistics.median(durations[5:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lumina-bench-train-"))
    os.environ.setdefault("LUMINA_STUDIO_HOME", str(work / "home"))
    model = build_model_folder(work / "model", SPEC)
    data = make_dataset(work / "data", args.size)

    like, run = trainer_steps_per_second(work, model, data, args, "like-for-like", ema_decay=0.0,
                                         activation_checkpointing=False)
    defaults, _ = trainer_steps_per_second(work, model, data, args, "defaults")
    plain = plain_steps_per_second(model, run, args)
    params = sum(p.numel() for p in load_dit(resolve_source(model), torch.float32, torch.device("cpu")).parameters())
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
        "versions": {"torch": torch.__version__, "accelerate": __import__("accelerate").__version__,
                     "python": platform.python_version()},
        "config": {"dit_params": params, "size": args.size, "micro_batch": args.batch, "steps": args.steps},
        "steps_per_second": {"plain_loop": plain, "trainer_like_for_like": like, "trainer_defaults": defaults},
        "vs_plain_loop": {"trainer_like_for_like": like / plain, "trainer_defaults": defaults / plain},
    }
    save_results("bench_train", result)
    print(json.dumps(result, indent=2))
    print(f"\n{'run':<28}{'steps/s':>10}{'vs plain':>10}")
    for name, value in result["steps_per_second"].items():
        print(f"{name:<28}{value:>10.3f}{value / plain:>9.2f}x")


if __name__ == "__main__":
    main()
