"""Gemma-2 as Lumina-Image 2.0 reads it: the hidden state before the last decoder layer (what transformers
returns as `hidden_states[-2]`), so the last layer and the final norm are never built or run.

Written here, not imported from transformers, because importing transformers' Gemma-2 modelling code costs
~2.8 s on a 2-core machine (its kernel hub, masking and generation modules pull in torch.distributed and
torch._dynamo), more than the whole start-up budget. The maths follows the published architecture and is
tested equal to transformers' Gemma2Model (tests/test_components_parity.py): RMSNorm scaled by (1 + w) in
float32, embeddings times sqrt(width), grouped-query attention scaled by query_pre_attn_scalar with tanh
soft-capping of the logits, causal masks with a sliding window on the sliding layers, RoPE by halves, and
a GELU(tanh)-gated MLP between pre- and post-norms.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelLoadError
from .checkpoints import assign_folder_weights
from .sources import read_json_file

ACTIVATIONS = {"gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"), "gelu": F.gelu}


@dataclass(frozen=True)
class Gemma2Settings:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    query_pre_attn_scalar: float
    rms_norm_eps: float
    rope_theta: float
    attn_logit_softcapping: float | None
    sliding_window: int | None
    layer_types: tuple[str, ...]
    attention_bias: bool
    hidden_activation: str

    @classmethod
    def from_dict(cls, raw: dict, where: str) -> Gemma2Settings:
        if raw.get("model_type") != "gemma2":
            raise ModelLoadError(f"{where} holds a '{raw.get('model_type')}' model; Lumina-Image 2.0 needs a "
                                 "Gemma-2 text encoder.")
        rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
        if rope.get("rope_type", "default") != "default" or raw.get("use_bidirectional_attention"):
            raise ModelLoadError(f"{where}: this Gemma-2 variant (RoPE '{rope.get('rope_type')}', bidirectional "
                                 f"{raw.get('use_bidirectional_attention')}) is not Lumina's text encoder.")
        try:
            layers = int(raw["num_hidden_layers"])
            hidden = int(raw["hidden_size"])
            heads = int(raw["num_attention_heads"])
            activation = raw.get("hidden_activation") or raw.get("hidden_act") or "gelu_pytorch_tanh"
            settings = cls(
                vocab_size=int(raw["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(raw["intermediate_size"]),
                num_hidden_layers=layers,
                num_attention_heads=heads,
                num_key_value_heads=int(raw.get("num_key_value_heads", heads)),
                head_dim=int(raw.get("head_dim") or hidden // heads),
                query_pre_attn_scalar=float(raw.get("query_pre_attn_scalar", 256)),
                rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
                rope_theta=float(rope.get("rope_theta", raw.get("rope_theta", 10000.0))),
                attn_logit_softcapping=raw.get("attn_logit_softcapping"),
                sliding_window=raw.get("sliding_window"),
                layer_types=tuple(raw.get("layer_types") or
                                  ("sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(layers))),
                attention_bias=bool(raw.get("attention_bias", False)),
                hidden_activation=activation,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{where}: the Gemma-2 config is incomplete or wrong ({exc}).") from None
        if activation not in ACTIVATIONS:
            raise ModelLoadError(f"{where}: unknown activation '{activation}'.")
        if len(settings.layer_types) != layers:
            raise ModelLoadError(f"{where}: layer_types names {len(settings.layer_types)} layers, not {layers}.")
        return settings


class RMSNorm(nn.Module):
    """Gemma's RMS norm: the weight is stored as an offset from 1 (zero-initialised, scaled by 1 + weight),
    unlike the DiT's norm in nextdit.py, which scales by the weight itself."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * (1.0 + self.weight.float())).type_as(x)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class Attention(nn.Module):
    def __init__(self, s: Gemma2Settings, sliding: bool):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = s.num_attention_heads, s.num_key_value_heads, s.head_dim
        self.scale = s.query_pre_attn_scalar ** -0.5
        self.softcap = s.attn_logit_softcapping
        self.window = s.sliding_window if sliding else None
        self.q_proj = nn.Linear(s.hidden_size, self.heads * self.head_dim, bias=s.attention_bias)
        self.k_proj = nn.Linear(s.hidden_size, self.kv_heads * self.head_dim, bias=s.attention_bias)
        self.v_proj = nn.Linear(s.hidden_size, self.kv_heads * self.head_dim, bias=s.attention_bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, s.hidden_size, bias=s.attention_bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, causal: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        groups = self.heads // self.kv_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        logits = (q @ k.transpose(2, 3)) * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        allowed = causal
        if self.window is not None:
            position = torch.arange(length, device=x.device)
            allowed = allowed & (position[:, None] - position[None, :] < self.window)
        logits = logits.masked_fill(~allowed, torch.finfo(logits.dtype).min)
        weights = logits.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
        out = (weights @ v).transpose(1, 2).reshape(batch, length, -1)
        return self.o_proj(out)


class MLP(nn.Module):
    def __init__(self, s: Gemma2Settings):
        super().__init__()
        self.gate_proj = nn.Linear(s.hidden_size, s.intermediate_size, bias=False)
        self.up_proj = nn.Linear(s.hidden_size, s.intermediate_size, bias=False)
        self.down_proj = nn.Linear(s.intermediate_size, s.hidden_size, bias=False)
        self.act = ACTIVATIONS[s.hidden_activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, s: Gemma2Settings, index: int):
        super().__init__()
        self.self_attn = Attention(s, sliding=s.layer_types[index] == "sliding_attention")
        self.mlp = MLP(s)
        self.input_layernorm = RMSNorm(s.hidden_size, s.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(s.hidden_size, s.rms_norm_eps)
        self.pre_feedforward_layernorm = RMSNorm(s.hidden_size, s.rms_norm_eps)
        self.post_feedforward_layernorm = RMSNorm(s.hidden_size, s.rms_norm_eps)

    def forward(self, x, cos, sin, causal):
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, causal))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


def rope_frequencies(s: Gemma2Settings) -> torch.Tensor:
    """On the CPU even while the model is built on the meta device (whose arange imports torch._dynamo)."""
    return 1.0 / s.rope_theta ** (torch.arange(0, s.head_dim, 2, dtype=torch.float32, device="cpu") / s.head_dim)


class Gemma2Encoder(nn.Module):
    """Token ids (B, L) -> the penultimate hidden state (B, L, width), for one unpadded prompt per row."""

    def __init__(self, settings: Gemma2Settings):
        super().__init__()
        self.config = settings
        # given its weight, the embedding skips its random init: normal_ on the meta device imports
        # torch._dynamo (a second of start-up)
        self.embed_tokens = nn.Embedding(settings.vocab_size, settings.hidden_size,
                                         _weight=torch.empty(settings.vocab_size, settings.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(settings, i) for i in range(settings.num_hidden_layers - 1))
        self.register_buffer("inv_freq", rope_frequencies(settings), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        weight = self.embed_tokens.weight
        scale = torch.tensor(self.config.hidden_size ** 0.5, dtype=torch.float32).to(weight.dtype)
        x = self.embed_tokens(input_ids) * scale
        length = input_ids.shape[1]
        position = torch.arange(length, device=input_ids.device, dtype=torch.float32)
        angles = position[:, None] * self.inv_freq.to(input_ids.device)[None, :]
        angles = torch.cat((angles, angles), dim=-1)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        causal = torch.ones(length, length, dtype=torch.bool, device=input_ids.device).tril()
        for layer in self.layers:
            x = layer(x, cos, sin, causal)
        return x


def load_gemma2_encoder(folder: Path, dtype: torch.dtype, device: torch.device) -> Gemma2Encoder:
    """A transformers Gemma-2 folder (config.json, one or several .safetensors) as Lumina's text encoder."""
    settings = Gemma2Settings.from_dict(read_json_file(folder / "config.json"), str(folder))
    with torch.device("meta"):
        encoder = Gemma2Encoder(settings)
    assign_folder_weights(encoder, folder, "text encoder", dtype, device, extra_allowed=True,
                          rename=lambda name: name.removeprefix("model."))  # saved from Gemma2ForCausalLM
    encoder.inv_freq = encoder.inv_freq.to(device)
    return encoder.eval().requires_grad_(False)
