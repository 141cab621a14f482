"""Grouped-query attention: SDPA with `enable_gqa` against K/V heads expanded first, same inputs, same run.

core.models.nextdit expands K/V where SDPA would fall back to its math kernel (CUDA with a key mask or in
float32); on a GPU this also says, per case, whether a fused kernel accepts the grouped call at all.

    python bench/bench_attention.py [--device cuda] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

# (name, batch, query heads, K/V heads, tokens, head size): the demo model, then the 2.6B model at 1024²
# (4096 image tokens + a caption) with CFG's two rows, one of them padded.
CASES = [("demo 64x64, batch 64", 64, 4, 2, 36, 32), ("2.6B 1024x1024, CFG", 2, 24, 8, 4096 + 60, 96)]


def attend(q, k, v, mask, expand: bool):
    if expand:
        k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=not expand)


def seconds(repeats: int, *args) -> float:
    """Mean seconds of attend(*args), after one warm-up call."""
    attend(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        attend(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def fused_accepts(q, k, v, mask) -> bool:
    """Whether flash or memory-efficient attention runs the grouped call (CUDA only)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            attend(q, k, v, mask, expand=False)
        return True
    except RuntimeError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    print(f"device {args.device}, {args.dtype}, torch {torch.__version__}")
    for name, batch, heads, kv_heads, length, size in CASES:
        generator = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(batch, h, length, size, generator=generator).to(args.device, dtype)
                   for h in (heads, kv_heads, kv_heads))
        mask = torch.ones(batch, 1, 1, length, dtype=torch.bool, device=args.device)
        mask[-1, ..., -10:] = False  # one padded caption
        for label, key_mask in (("with mask", mask), ("no mask", None)):
            grouped = seconds(args.repeats, q, k, v, key_mask, False)
            expanded = seconds(args.repeats, q, k, v, key_mask, True)
            fused = f", fused kernel takes grouped heads: {fused_accepts(q, k, v, key_mask)}" if q.is_cuda else ""
            print(f"{name}, {label}: enable_gqa {grouped * 1000:.2f} ms, expanded {expanded * 1000:.2f} ms "
                  f"({grouped / expanded:.2f}x the expanded time){fused}")


if __name__ == "__main__":
    main()
