"""Which backend is faster on this machine for this model: measured once, then remembered.

The measurement runs full transformer passes (embed, joint blocks, final layer) of both backends at a
representative size (1024x1024 on CUDA, 256x256 on the CPU) with a 128-token caption, after a warm-up.
The result is kept in backend_choice.json in the data folder, keyed by model hash, device, precision and
library versions, so a new driver or release measures again.
"""

from __future__ import annotations

import time

import torch

from ..storage import data_dir, read_json, write_json_atomic

CAPTION_TOKENS = 128


def choice_key(model_hash: str, device: torch.device, precision: str) -> str:
    import onnxruntime

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return f"{model_hash[:16]}|{name}|{precision}|torch {torch.__version__}|ort {onnxruntime.__version__}"


def remembered(key: str) -> str | None:
    entry = read_json(data_dir() / "backend_choice.json", {}).get(key)
    return entry["backend"] if entry else None


def remember(key: str, timings: dict[str, float]) -> str:
    path = data_dir() / "backend_choice.json"
    choices = read_json(path, {})
    best = min(timings, key=timings.get)
    choices[key] = {"backend": best, "seconds_per_pass": timings, "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json_atomic(path, choices)
    return best


@torch.no_grad()
def seconds_per_pass(stages, config, device: torch.device, repeats: int = 3) -> float:
    side = 1024 if device.type == "cuda" else 256
    latent_size = (side // 8, side // 8)
    features = torch.randn(1, CAPTION_TOKENS, config.cap_feat_dim)
    cond = stages.prepare(features, torch.ones(1, CAPTION_TOKENS, dtype=torch.long), latent_size)
    x = torch.randn(1, config.in_channels, *latent_size, device=device)
    t = torch.full((1,), 0.5, device=device)

    def one_pass():
        hidden, temb, _ = stages.embed(x, t, cond, with_signal=False)
        stages.final(stages.joint(hidden, temb, cond), temb, cond)

    one_pass()  # warm-up: allocations, kernel selection
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        one_pass()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / repeats
