"""CPU: PyTorch vs ONNX Runtime (CPU provider) per step, and cached vs uncached sampling, in one run.

Same model folder and settings as bench_generate.py (all Lumina-Image 2.0 parts scaled down, 256x256,
Euler, guidance 4 on every step). Per-step figures time the sampling loop only (no text encoder or VAE).
Writes bench/out/bench_backends.json and prints a table.

    python bench/bench_backends.py [--steps 20] [--size 256] [--repeats 3]
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_generate import PROMPT, SPEC, bench_args, cpu_name, median_time  # noqa: E402

from core.generation.engine import Engine  # noqa: E402
from core.models.sources import resolve_source  # noqa: E402
from core.models.scaffold import build_model_folder  # noqa: E402
from core.generation.request import GenerationRequest  # noqa: E402
from results import save_results  # noqa: E402


def main() -> None:
    args = bench_args()
    os.environ.setdefault("LUMINA_STUDIO_HOME", tempfile.mkdtemp(prefix="lumina-bench-"))
    folder = build_model_folder(Path(tempfile.mkdtemp(prefix="lumina-bench-model-")) / "model", SPEC)
    source = resolve_source(folder)
    engines = {"torch": Engine(source, device="cpu"), "onnx": Engine(source, device="cpu", backend="onnx")}
    started = time.perf_counter()
    for engine in engines.values():
        engine.load()
    load_s = time.perf_counter() - started

    def request(cache: str) -> GenerationRequest:
        return GenerationRequest(PROMPT, width=args.size, height=args.size, steps=args.steps, guidance=4.0,
                                 cfg_trunc=1.0, cfg_renorm=1.0, solver="euler", seed=1, compat="diffusers", cache=cache)

    rows = {}
    reference = {}
    for backend, engine in engines.items():
        for cache in ("off", "0.3", "1.0"):
            results = []

            def run(engine=engine, cache=cache, results=results):
                results.append(engine.generate(request(cache))[0])

            seconds = median_time(run, args.repeats)
            last = results[-1]
            if cache == "off":
                reference[backend] = last.pixels
            error = float(np.abs(last.pixels - reference[backend]).max())
            mse = float(np.mean((last.pixels - reference[backend]) ** 2))
            rows[f"{backend} cache {cache}"] = {
                "seconds_total": seconds,
                "ms_per_step": 1000 * last.timings["sample_s"] / args.steps,
                "transformer_evaluations": last.evaluations,
                "joint_block_evaluations": last.joint_evaluations,
                "psnr_vs_uncached_db": None if mse == 0 else 10 * np.log10(1 / mse),
                "max_abs_vs_uncached": error,
            }
    torch_ms = rows["torch cache off"]["ms_per_step"]
    for row in rows.values():
        row["speed_vs_torch_uncached"] = torch_ms / row["ms_per_step"]
    backend_gap = float(np.abs(reference["torch"] - reference["onnx"]).max())
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
        "versions": {"torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__,
                     "python": platform.python_version()},
        "config": {"dit_params": sum(p.numel() for p in engines["torch"].dit.parameters()), "size": args.size,
                   "steps": args.steps, "guidance": 4.0, "load_and_export_s": load_s},
        "torch_vs_onnx_max_abs": backend_gap,
        "runs": rows,
    }
    save_results("bench_backends", result)
    print(json.dumps(result, indent=2))
    print(f"\n{'run':<22}{'ms/step':>9}{'vs torch':>10}{'evals':>7}{'joint':>7}{'PSNR dB':>9}")
    for name, row in rows.items():
        psnr = "exact" if row["psnr_vs_uncached_db"] is None else f"{row['psnr_vs_uncached_db']:.1f}"
        print(f"{name:<22}{row['ms_per_step']:>9.1f}{row['speed_vs_torch_uncached']:>9.2f}x"
              f"{row['transformer_evaluations']:>7}{row['joint_block_evaluations']:>7}{psnr:>9}")


if __name__ == "__main__":
    main()
