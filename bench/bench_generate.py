"""Time one generation through our engine and through diffusers' Lumina2Pipeline, in the same run.

A small-but-real configuration (every Lumina-Image 2.0 part, scaled down so 2 CPU cores finish in
minutes), equal settings on both sides (--compat diffusers: Euler, same steps, CFG every step with
normalisation), same model folder, same seed. Prints milliseconds and the ratio; writes JSON to bench/out/.

    python bench/bench_generate.py [--steps 20] [--size 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.generation.engine import Engine  # noqa: E402
from core.models.sources import resolve_source  # noqa: E402
from core.models.scaffold import ScaffoldSpec, build_model_folder  # noqa: E402
from core.generation.request import GenerationRequest  # noqa: E402
from results import save_results  # noqa: E402

SPEC = ScaffoldSpec(
    hidden_size=384, num_layers=8, num_refiner_layers=2, num_attention_heads=8, num_kv_heads=4,
    multiple_of=64, text_width=384, text_layers=4, vocab_size=2000, vae_channels=(32, 64, 64, 64),
)
PROMPT = ("A charcoal sketch of Istanbul with the Hagia Sophia; streets wind through bright houses, "
          "trees and flowers, puddles reflect the light.")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up: first-call allocations and caches
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_args():
    """The options every CPU benchmark here shares."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


def main() -> None:
    args = bench_args()
    torch.manual_seed(0)
    os.environ.setdefault("LUMINA_STUDIO_HOME", tempfile.mkdtemp(prefix="lumina-bench-"))

    from diffusers import Lumina2Pipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    folder = build_model_folder(Path(tempfile.mkdtemp(prefix="lumina-bench-model-")) / "model", SPEC)
    pipe = Lumina2Pipeline.from_pretrained(str(folder), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    engine = Engine(resolve_source(folder), device="cpu")
    engine.load()
    request = GenerationRequest(PROMPT, width=args.size, height=args.size, steps=args.steps, guidance=4.0,
                                cfg_trunc=1.0, cfg_renorm=1.0, solver="euler", seed=1, compat="diffusers")

    def diffusers_run():
        pipe(PROMPT, width=args.size, height=args.size, num_inference_steps=args.steps, guidance_scale=4.0,
             cfg_trunc_ratio=1.0, cfg_normalization=True, generator=torch.Generator("cpu").manual_seed(1),
             output_type="np")

    def ours(batch_cfg: bool):
        def run():
            engine.batch_cfg = batch_cfg
            engine.prompts._cache.clear()  # encode every time, as diffusers does
            engine.generate(request)
        return run

    with torch.inference_mode():
        reference = median_time(diffusers_run, args.repeats)
        separate = median_time(ours(False), args.repeats)
        batched = median_time(ours(True), args.repeats)

    params = sum(p.numel() for p in engine.dit.parameters())
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
        "versions": {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__,
                     "python": platform.python_version()},
        "config": {"dit_params": params, "size": args.size, "steps": args.steps, "guidance": 4.0,
                   "image_tokens": (args.size // 16) ** 2},
        "seconds": {"diffusers_Lumina2Pipeline": reference, "ours_separate_cfg": separate, "ours_batched_cfg": batched},
        "speedup_vs_diffusers": {"separate_cfg": reference / separate, "batched_cfg": reference / batched},
    }
    save_results("bench_generate", result)
    print(json.dumps(result, indent=2))
    print(f"\n{'run':<32}{'seconds':>10}{'vs diffusers':>14}")
    for name, seconds in result["seconds"].items():
        print(f"{name:<32}{seconds:>10.3f}{reference / seconds:>13.2f}x")


if __name__ == "__main__":
    main()
