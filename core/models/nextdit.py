"""Unified Next-DiT (Lumina-Image 2.0), written for staged, export-friendly inference.

Parameter names equal diffusers' `Lumina2Transformer2DModel`, so its checkpoints load as they are.
What differs is how the forward pass is organised:
  * `prepare()` does everything that does not depend on the time t (caption embedding, the context
    refiner, RoPE tables, masks) once per generation;
  * `embed()` / `joint_blocks()` / `final()` are the three stages a cache policy or an exported graph
    can run separately;
  * captions stay padded with a key mask (no data-dependent compaction), and RoPE uses real cos/sin
    tables (adjacent-pair rotation) instead of complex numbers.
Both are mathematically equal to the stock model: masked keys contribute nothing to attention, and the
image tokens get the same RoPE positions (caption length, row, column).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .nextdit_config import NextDiTConfig


class RMSNorm(nn.Module):
    """RMS norm computed in float32, as diffusers does, then scaled by the learned weight."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        return x.to(self.weight.dtype) * self.weight


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs. x: (B, L, H, D); cos, sin: (B, L, 1, D/2) in float32."""
    pairs = x.float().unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)


def sdpa_takes_grouped_heads(q: torch.Tensor, key_mask: torch.Tensor | None) -> bool:
    """Whether SDPA runs grouped-query attention (`enable_gqa`) in a fused kernel. On CUDA only the flash
    kernel does, and only in half precision without a mask (padded captions bring one); elsewhere it falls
    back to the math kernel, which holds every L x L score. The CPU kernel takes grouped heads as fast as or
    faster than expanded K/V (bench/bench_attention.py)."""
    return not q.is_cuda or (key_mask is None and q.dtype in (torch.float16, torch.bfloat16))


class Attention(nn.Module):
    """Grouped-query self-attention with RMS-normalised queries and keys."""

    def __init__(self, config: NextDiTConfig):
        super().__init__()
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        dim = config.hidden_size
        self.to_q = nn.Linear(dim, self.heads * self.head_dim, bias=False)
        self.to_k = nn.Linear(dim, self.kv_heads * self.head_dim, bias=False)
        self.to_v = nn.Linear(dim, self.kv_heads * self.head_dim, bias=False)
        self.norm_q = RMSNorm(self.head_dim, eps=1e-5)
        self.norm_k = RMSNorm(self.head_dim, eps=1e-5)
        self.to_out = nn.ModuleList([nn.Linear(self.heads * self.head_dim, dim, bias=False)])

    def forward(self, x, cos, sin, key_mask):
        batch, length, _ = x.shape
        q = self.norm_q(self.to_q(x).view(batch, length, self.heads, self.head_dim))
        k = self.norm_k(self.to_k(x).view(batch, length, self.kv_heads, self.head_dim))
        v = self.to_v(x).view(batch, length, self.kv_heads, self.head_dim)
        q = apply_rope(q, cos, sin).transpose(1, 2)
        k = apply_rope(k, cos, sin).transpose(1, 2)
        v = v.transpose(1, 2)
        grouped = self.heads != self.kv_heads
        if grouped and not sdpa_takes_grouped_heads(q, key_mask):  # give each query head its own K/V copy
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
            grouped = False
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, enable_gqa=grouped)
        return self.to_out[0](out.transpose(1, 2).reshape(batch, length, self.heads * self.head_dim))


class FeedForward(nn.Module):
    """SwiGLU without bias; the SiLU runs in float32 as in diffusers."""

    def __init__(self, config: NextDiTConfig):
        super().__init__()
        dim, inner = config.hidden_size, config.ffn_inner_dim
        self.linear_1 = nn.Linear(dim, inner, bias=False)
        self.linear_2 = nn.Linear(inner, dim, bias=False)
        self.linear_3 = nn.Linear(dim, inner, bias=False)

    def forward(self, x):
        gate = F.silu(self.linear_1(x).float()).to(x.dtype)
        return self.linear_2(gate * self.linear_3(x))


class Modulation(nn.Module):
    """norm1 of a modulated block: RMS norm plus Linear(SiLU(t_emb)) -> 4 modulation vectors."""

    def __init__(self, config: NextDiTConfig):
        super().__init__()
        self.linear = nn.Linear(config.time_embed_dim, 4 * config.hidden_size, bias=True)
        self.norm = RMSNorm(config.hidden_size, eps=config.norm_eps)


class Block(nn.Module):
    """Sandwich-normed attention + FFN. Modulated blocks scale by (1 + scale) and gate by tanh(gate)."""

    def __init__(self, config: NextDiTConfig, modulation: bool):
        super().__init__()
        self.modulation = modulation
        eps = config.norm_eps
        self.attn = Attention(config)
        self.feed_forward = FeedForward(config)
        self.norm1 = Modulation(config) if modulation else RMSNorm(config.hidden_size, eps)
        self.norm2 = RMSNorm(config.hidden_size, eps)
        self.ffn_norm1 = RMSNorm(config.hidden_size, eps)
        self.ffn_norm2 = RMSNorm(config.hidden_size, eps)

    def forward(self, x, cos, sin, key_mask, temb=None):
        if not self.modulation:
            x = x + self.norm2(self.attn(self.norm1(x), cos, sin, key_mask))
            return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))
        scale_msa, gate_msa, scale_mlp, gate_mlp = self.norm1.linear(F.silu(temb)).chunk(4, dim=1)
        attn_in = self.norm1.norm(x) * (1 + scale_msa[:, None])
        x = x + gate_msa[:, None].tanh() * self.norm2(self.attn(attn_in, cos, sin, key_mask))
        ffn_in = self.ffn_norm1(x) * (1 + scale_mlp[:, None])
        return x + gate_mlp[:, None].tanh() * self.ffn_norm2(self.feed_forward(ffn_in))


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of t in [0, 1] (cos first), then a 2-layer SiLU MLP."""

    def __init__(self, config: NextDiTConfig, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.linear_1 = nn.Linear(frequency_dim, config.time_embed_dim)
        self.linear_2 = nn.Linear(config.time_embed_dim, config.time_embed_dim)

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        half = self.frequency_dim // 2
        exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half
        angles = t[:, None].float() * torch.exp(exponent)[None]
        embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).to(dtype)
        return self.linear_2(F.silu(self.linear_1(embedding)))


class TimeCaptionEmbed(nn.Module):
    def __init__(self, config: NextDiTConfig):
        super().__init__()
        self.timestep_embedder = TimestepEmbedder(config)
        self.caption_embedder = nn.Sequential(
            RMSNorm(config.cap_feat_dim, eps=config.norm_eps),
            nn.Linear(config.cap_feat_dim, config.hidden_size, bias=True),
        )


class OutputHead(nn.Module):
    """Final layer: parameter-free LayerNorm scaled by (1 + Linear(SiLU(t_emb))), then a projection."""

    def __init__(self, config: NextDiTConfig):
        super().__init__()
        patch_area = config.patch_size * config.patch_size
        self.linear_1 = nn.Linear(config.time_embed_dim, config.hidden_size, bias=True)
        self.linear_2 = nn.Linear(config.hidden_size, patch_area * config.latent_channels_out, bias=True)

    def forward(self, x, temb):
        scale = self.linear_1(F.silu(temb).to(x.dtype))
        x = F.layer_norm(x, (x.shape[-1],), eps=1e-6) * (1 + scale)[:, None, :]
        return self.linear_2(x)


def rope_tables(config: NextDiTConfig, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin for integer positions (B, L, 3): angles in float64 (as diffusers' tables), float32 results."""
    angles = []
    for axis, dim in enumerate(config.axes_dim_rope):
        exponents = torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device)[: dim // 2] / dim
        angles.append(positions[..., axis, None].double() / (10000**exponents))
    angles = torch.cat(angles, dim=-1)[:, :, None, :]
    return torch.cos(angles).float(), torch.sin(angles).float()


@dataclass
class Layout:
    """Token positions, RoPE tables and masks for captions of given lengths and one latent size.

    The sequence is [captions right-padded to the longest; image tokens]. Caption token i sits at
    (i, 0, 0); image patch (r, c) at (caption length, r, c), exactly as in the stock model.
    """

    caption_lengths: list[int]
    latent_size: tuple[int, int]
    caption_rope: tuple[torch.Tensor, torch.Tensor]  # (B, Lc, 1, D/2) each
    image_rope: tuple[torch.Tensor, torch.Tensor]  # (B, N, 1, D/2)
    joint_rope: tuple[torch.Tensor, torch.Tensor]  # (B, Lc + N, 1, D/2)
    caption_mask: torch.Tensor  # (B, Lc) bool, True = real token
    joint_mask: torch.Tensor  # (B, Lc + N) bool

    @property
    def padded(self) -> bool:
        return min(self.caption_lengths) != max(self.caption_lengths)

    @classmethod
    def from_mask(cls, config: NextDiTConfig, caption_mask: torch.Tensor, latent_size, device) -> Layout:
        """The layout for right-padded captions with a (B, L) 0/1 mask (one host read of the lengths)."""
        return cls.build(config, [int(n) for n in caption_mask.sum(dim=1).tolist()], latent_size, device)

    @property
    def caption_width(self) -> int:
        return max(self.caption_lengths)

    @classmethod
    def build(cls, config: NextDiTConfig, lengths: list[int], latent_size, device) -> Layout:
        batch, width = len(lengths), max(lengths)
        lengths_t = torch.tensor(lengths, device=device)
        caption_mask = torch.arange(width, device=device)[None, :] < lengths_t[:, None]
        caption_positions = torch.zeros(batch, width, 3, dtype=torch.long, device=device)
        caption_positions[..., 0] = torch.arange(width, device=device)
        grid_h, grid_w = latent_size[0] // config.patch_size, latent_size[1] // config.patch_size
        r, c = torch.meshgrid(torch.arange(grid_h, device=device), torch.arange(grid_w, device=device), indexing="ij")
        image_positions = torch.stack([torch.zeros_like(r), r, c], dim=-1).flatten(0, 1).repeat(batch, 1, 1)
        image_positions[..., 0] = lengths_t[:, None]
        caption_rope = rope_tables(config, caption_positions)
        image_rope = rope_tables(config, image_positions)
        image_mask = torch.ones(batch, grid_h * grid_w, dtype=torch.bool, device=device)
        return cls(
            caption_lengths=list(lengths),
            latent_size=tuple(latent_size),
            caption_rope=caption_rope,
            image_rope=image_rope,
            joint_rope=tuple(torch.cat(pair, dim=1) for pair in zip(caption_rope, image_rope)),
            caption_mask=caption_mask,
            joint_mask=torch.cat([caption_mask, image_mask], dim=1),
        )


@dataclass
class Conditioning:
    """A layout plus the refined caption tokens: everything per generation that does not depend on t."""

    layout: Layout
    caption_tokens: torch.Tensor  # (B, Lc, hidden) after embedding and the context refiner

    @property
    def batch_size(self) -> int:
        return self.caption_tokens.shape[0]

    @property
    def caption_width(self) -> int:
        return self.caption_tokens.shape[1]

    @property
    def attention_mask(self) -> torch.Tensor | None:
        """(B, 1, 1, L) key mask for the joint blocks; None (faster) when no row has padding."""
        return self.layout.joint_mask[:, None, None, :] if self.layout.padded else None


class NextDiT(nn.Module):
    def __init__(self, config: NextDiTConfig):
        super().__init__()
        self.config = config
        patch_area = config.patch_size * config.patch_size
        self.x_embedder = nn.Linear(patch_area * config.in_channels, config.hidden_size)
        self.time_caption_embed = TimeCaptionEmbed(config)
        refiners = config.num_refiner_layers
        self.noise_refiner = nn.ModuleList([Block(config, modulation=True) for _ in range(refiners)])
        self.context_refiner = nn.ModuleList([Block(config, modulation=False) for _ in range(refiners)])
        self.layers = nn.ModuleList([Block(config, modulation=True) for _ in range(config.num_layers)])
        self.norm_out = OutputHead(config)
        self.activation_checkpointing = False  # training switches it on to trade compute for memory

    @property
    def dtype(self) -> torch.dtype:
        return self.x_embedder.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.x_embedder.weight.device

    # ---- t-independent work, once per generation -------------------------------------------

    def refine_captions(self, features: torch.Tensor, caption_rope, key_mask: torch.Tensor | None) -> torch.Tensor:
        """Caption features (B, Lc, cap_feat_dim) -> tokens after the embedder and the context refiner."""
        tokens = self.time_caption_embed.caption_embedder(features.to(self.dtype))
        for block in self.context_refiner:
            tokens = block(tokens, *caption_rope, key_mask)
        return tokens

    def condition(self, caption_features: torch.Tensor, caption_mask: torch.Tensor, latent_size) -> Conditioning:
        """caption_features: (B, L, cap_feat_dim), right-padded; caption_mask: (B, L), 1 = real token."""
        layout = Layout.from_mask(self.config, caption_mask, latent_size, self.device)
        features = caption_features[:, : layout.caption_width].to(self.device)
        key_mask = layout.caption_mask[:, None, None, :] if layout.padded else None
        return Conditioning(layout, self.refine_captions(features, layout.caption_rope, key_mask))

    @torch.no_grad()
    def prepare(self, caption_features: torch.Tensor, caption_mask: torch.Tensor, latent_size) -> Conditioning:
        """`condition` for inference (no autograd graph)."""
        return self.condition(caption_features, caption_mask, latent_size)

    # ---- the three per-step stages --------------------------------------------------------

    def embed_image(self, x: torch.Tensor, t: torch.Tensor, image_rope):
        """Latent (B, C, H, W), t (B,) -> image tokens after the noise refiner, and the time embedding."""
        temb = self.time_caption_embed.timestep_embedder(t, self.dtype)
        batch, channels, height, width = x.shape
        p = self.config.patch_size
        patches = (
            x.to(self.dtype)
            .view(batch, channels, height // p, p, width // p, p)
            .permute(0, 2, 4, 3, 5, 1)
            .flatten(3)
            .flatten(1, 2)
        )
        image = self.x_embedder(patches)
        for block in self.noise_refiner:
            image = block(image, *image_rope, None, temb)
        return image, temb

    def embed(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning):
        """Stage 1: the joint sequence [caption; image] (B, Lc+N, hidden) and the time embedding."""
        image, temb = self.embed_image(x, t, cond.layout.image_rope)
        return torch.cat([cond.caption_tokens, image], dim=1), temb

    def modulated_input(self, hidden: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """The first joint block's modulated input: the signal the step cache watches."""
        first = self.layers[0].norm1
        scale_msa = first.linear(F.silu(temb)).chunk(4, dim=1)[0]
        return first.norm(hidden) * (1 + scale_msa[:, None])

    def joint_blocks(self, hidden: torch.Tensor, temb: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """Stage 2: the joint transformer blocks (what the cache may skip)."""
        return self.run_joint_blocks(hidden, temb, cond.layout.joint_rope, cond.attention_mask)

    def run_joint_blocks(self, hidden, temb, joint_rope, key_mask):
        recompute = self.activation_checkpointing and torch.is_grad_enabled()
        for block in self.layers:
            if recompute:  # keep only each block's input; recompute the inside during backward
                hidden = checkpoint(block, hidden, *joint_rope, key_mask, temb, use_reentrant=False)
            else:
                hidden = block(hidden, *joint_rope, key_mask, temb)
        return hidden

    def final(self, hidden: torch.Tensor, temb: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """Stage 3: joint sequence -> velocity (B, C_out, H, W) in float32."""
        return self.velocity(hidden[:, cond.caption_width :], temb, *cond.layout.latent_size)

    def velocity(self, image: torch.Tensor, temb: torch.Tensor, height: int, width: int) -> torch.Tensor:
        out = self.norm_out(image, temb)
        p, channels = self.config.patch_size, self.config.latent_channels_out
        return (
            out.view(out.shape[0], height // p, width // p, p, p, channels)
            .permute(0, 5, 1, 3, 2, 4)
            .reshape(out.shape[0], channels, height, width)
            .float()
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, caption_features: torch.Tensor,
                caption_mask: torch.Tensor) -> torch.Tensor:
        """The whole model in one call (training): latent x (B, C, H, W), t (B,) -> velocity (float32)."""
        cond = self.condition(caption_features, caption_mask, x.shape[-2:])
        hidden, temb = self.embed(x, t, cond)
        return self.final(self.joint_blocks(hidden, temb, cond), temb, cond)
