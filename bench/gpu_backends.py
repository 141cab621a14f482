"""GPU benchmark: the full 2.6B Next-DiT with random weights, 1024x1024, 30 steps, CFG 4.0 on every step.

Compared in one run, on the same weights and inputs (transformer work only; speed does not depend on
the weights' values, and the text encoder and VAE are the same for every variant):
  diffusers   Lumina2Transformer2DModel called as Lumina2Pipeline calls it: conditional and
              unconditional passes apart, captions padded to 256 tokens with a mask
  torch       our PyTorch backend (staged, captions trimmed, CFG passes batched), without / with cache 0.3
  onnx        our ONNX Runtime backend on the CUDA provider (bf16 graphs), without / with cache 0.3
Reports ms per step, achieved TFLOP/s (FLOPs counted from the architecture, ~23 TFLOP per pass at
1024x1024 with a 128-token caption), joint-block evaluations and peak GPU memory; checks fp16 for overflow.
Writes $OUT/gpu_backends.json (or bench/out/) and prints a table last.

    python bench/gpu_backends.py            # on the GPU machine
    python bench/gpu_backends.py --small    # the same code on a CPU with a small configuration
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.backends.denoiser import StagedDenoiser  # noqa: E402
from core.backends.onnx_backend import OrtStages  # noqa: E402
from core.backends.onnx_export import export_graphs  # noqa: E402
from core.backends.torch_backend import TorchStages  # noqa: E402
from core.models.nextdit import NextDiT, NextDiTConfig  # noqa: E402
from core.generation.prompt_encoder import EncodedPrompt  # noqa: E402
from core.sampling.cache import CacheSettings, StepCache  # noqa: E402
from core.sampling.guidance import DiffusersGuidance  # noqa: E402
from core.sampling.sampler import sample  # noqa: E402
from core.sampling.schedule import diffusers_grid  # noqa: E402
from core.sampling.solvers import Euler  # noqa: E402
from results import OUT, save_results  # noqa: E402

SMALL = dict(hidden_size=384, num_layers=8, num_attention_heads=8, num_kv_heads=4, multiple_of=64, cap_feat_dim=384,
             axes_dim_rope=(16, 16, 16))
CAPTION_TOKENS, NEGATIVE_TOKENS, PADDED = 128, 1, 256


def pass_flops(config: NextDiTConfig, image_tokens: int, caption_tokens: int) -> float:
    """Matmul and attention FLOPs of one transformer pass (refiners and joint blocks)."""
    h, kv, ffn = config.hidden_size, config.num_kv_heads * config.head_dim, config.ffn_inner_dim
    per_token = 2 * (2 * h * h + 2 * h * kv) + 2 * 3 * h * ffn

    def blocks(count, length):
        return count * (per_token * length + 4 * length * length * h)

    joint = caption_tokens + image_tokens
    return (blocks(config.num_layers, joint) + blocks(config.num_refiner_layers, image_tokens)
            + blocks(config.num_refiner_layers, caption_tokens))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", action="store_true", help="small configuration (CPU check of this script)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--skip-onnx", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size = 256 if args.small else args.size
    config = NextDiTConfig(**SMALL) if args.small else NextDiTConfig()
    latent = (size // 8, size // 8)
    image_tokens = (size // 16) ** 2
    torch.manual_seed(0)

    from diffusers import Lumina2Transformer2DModel
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()

    with torch.device(device):
        reference = Lumina2Transformer2DModel(**{k: v for k, v in config.to_diffusers_dict().items() if k != "_class_name"})
    reference = reference.to(dtype).eval().requires_grad_(False)
    ours = NextDiT(config)
    ours.load_state_dict(reference.state_dict(), assign=True)  # shares the same weight tensors
    ours.eval().requires_grad_(False)

    positive = EncodedPrompt(torch.randn(1, CAPTION_TOKENS, config.cap_feat_dim, dtype=dtype), CAPTION_TOKENS, "")
    negative = EncodedPrompt(torch.randn(1, NEGATIVE_TOKENS, config.cap_feat_dim, dtype=dtype), NEGATIVE_TOKENS, "")
    grid = diffusers_grid(args.steps, 6.0)
    guidance = DiffusersGuidance(4.0, 1.0, True)
    noise = torch.randn(1, config.in_channels, *latent, generator=torch.Generator().manual_seed(1)).to(device)
    flops_per_pass = pass_flops(config, image_tokens, CAPTION_TOKENS)
    results = {}

    def measure(name, run):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            free_before = torch.cuda.mem_get_info(device)[0]
        run(1)  # warm-up
        sync(device)
        started = time.perf_counter()
        evaluations = run(args.steps)
        sync(device)
        seconds = time.perf_counter() - started
        row = {"ms_per_step": 1000 * seconds / args.steps, "passes": evaluations[0], "joint_passes": evaluations[1]}
        row["tflops"] = flops_per_pass * row["joint_passes"] / seconds / 1e12
        if device.type == "cuda":
            row["peak_torch_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            row["device_used_gib"] = (free_before - torch.cuda.mem_get_info(device)[0]) / 2**30
        results[name] = row
        print(name, {k: round(v, 2) for k, v in row.items()}, flush=True)

    # diffusers, as Lumina2Pipeline calls it
    padded = torch.zeros(1, PADDED, config.cap_feat_dim, dtype=dtype, device=device)
    masks = []
    feats = []
    for prompt in (positive, negative):
        f = padded.clone()
        f[:, : prompt.token_count] = prompt.features.to(device)
        m = torch.zeros(1, PADDED, dtype=torch.long, device=device)
        m[:, : prompt.token_count] = 1
        feats.append(f)
        masks.append(m)

    @torch.no_grad()
    def diffusers_run(steps):
        x = noise.to(dtype)
        for i in range(steps):
            t = torch.full((1,), grid[i], device=device)  # float32, as the pipeline passes it
            v_c = reference(x, t, feats[0], masks[0], return_dict=False)[0]
            v_u = reference(x, t, feats[1], masks[1], return_dict=False)[0]
            v = guidance.combine(v_c.float(), v_u.float())
            x = (x.float() + (grid[i + 1] - grid[i]) * v).to(dtype)
        return 2 * steps, 2 * steps

    measure("diffusers", diffusers_run)

    def ours_run(stages, cache_threshold):
        def run(steps):
            denoiser = StagedDenoiser(stages, positive, negative, latent, batch_cfg=device.type == "cuda")
            denoiser.start_image(StepCache(CacheSettings(cache_threshold)) if cache_threshold else None)
            sample(denoiser, noise, grid[: steps + 1], Euler(), guidance)
            return denoiser.evaluations, denoiser.joint_evaluations
        return run

    torch_stages = TorchStages(ours)
    measure("torch", ours_run(torch_stages, None))
    measure("torch cache 0.3", ours_run(torch_stages, 0.3))

    if device.type == "cuda":  # fp16 overflow check: one pass of the same weights in fp16
        half = NextDiT(config)
        half.load_state_dict({k: v.half() for k, v in reference.state_dict().items()}, assign=True)
        with torch.no_grad():
            cond = half.prepare(positive.features.half(), torch.ones(1, CAPTION_TOKENS), latent)
            hidden, temb = half.embed(noise, torch.full((1,), 0.5, device=device), cond)
            out = half.joint_blocks(hidden, temb, cond)
        results["fp16_check"] = {"finite": bool(torch.isfinite(out).all()), "max_abs_activation": float(out.abs().max())}
        del half, hidden, out

    if not args.skip_onnx:
        folder = Path(tempfile.mkdtemp(prefix="lumina-onnx-"))
        started = time.perf_counter()
        export_graphs(ours, folder / "graphs", "bf16" if dtype == torch.bfloat16 else "fp32")
        results["onnx_export_s"] = time.perf_counter() - started
        del reference
        ort_stages = OrtStages(folder / "graphs", config, device)
        results["onnx_provider"] = ort_stages.provider
        measure("onnx", ours_run(ort_stages, None))
        measure("onnx cache 0.3", ours_run(ort_stages, 0.3))

    import diffusers
    import onnxruntime

    base = results["diffusers"]["ms_per_step"]
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "onnxruntime": onnxruntime.__version__},
        "config": {"params": sum(p.numel() for p in ours.parameters()), "size": size, "steps": args.steps,
                   "dtype": str(dtype), "tflop_per_pass": flops_per_pass / 1e12},
        "results": results,
    }
    save_results("gpu_backends", summary, Path(os.environ["OUT"]) if os.environ.get("OUT") else OUT)
    print(f"\n{summary['device']}, {summary['config']['params'] / 1e9:.2f}B params, {size}x{size}, {args.steps} steps, "
          f"{flops_per_pass / 1e12:.3g} TFLOP/pass")
    print(f"{'variant':<18}{'ms/step':>9}{'vs diffusers':>14}{'TFLOP/s':>9}{'joint/passes':>14}{'peak GiB':>10}")
    for name, row in results.items():
        if isinstance(row, dict) and "ms_per_step" in row:
            print(f"{name:<18}{row['ms_per_step']:>9.1f}{base / row['ms_per_step']:>13.2f}x{row['tflops']:>9.3g}"
                  f"{row['joint_passes']:>7}/{row['passes']:<6}{row.get('peak_torch_gib', 0):>10.1f}")


if __name__ == "__main__":
    main()
