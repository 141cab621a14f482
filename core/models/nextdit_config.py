"""The Next-DiT architecture's settings, apart from the model so that the app and the wizard's memory
estimate can read a model's config.json without importing torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..errors import ModelLoadError
from .sources import read_json_file

LUMINA_DIT = "Lumina2Transformer2DModel"  # diffusers' class name, in a transformer folder's config.json


@dataclass(frozen=True)
class NextDiTConfig:
    """The architecture; field names and defaults follow diffusers' config.json (2.6B release)."""

    sample_size: int = 128
    patch_size: int = 2
    in_channels: int = 16
    out_channels: int | None = None
    hidden_size: int = 2304
    num_layers: int = 26
    num_refiner_layers: int = 2
    num_attention_heads: int = 24
    num_kv_heads: int = 8
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    scaling_factor: float = 1.0
    axes_dim_rope: tuple[int, int, int] = (32, 32, 32)
    axes_lens: tuple[int, int, int] = (300, 512, 512)
    cap_feat_dim: int = 2304

    @classmethod
    def from_dict(cls, data: dict) -> NextDiTConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("axes_dim_rope", "axes_lens"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def to_diffusers_dict(self) -> dict:
        data = asdict(self)
        data["axes_dim_rope"] = list(self.axes_dim_rope)
        data["axes_lens"] = list(self.axes_lens)
        return {"_class_name": LUMINA_DIT, **data}

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def time_embed_dim(self) -> int:
        return min(self.hidden_size, 1024)

    @property
    def latent_channels_out(self) -> int:
        return self.out_channels or self.in_channels

    @property
    def ffn_inner_dim(self) -> int:
        inner = 4 * self.hidden_size
        if self.ffn_dim_multiplier is not None:
            inner = int(self.ffn_dim_multiplier * inner)
        return self.multiple_of * ((inner + self.multiple_of - 1) // self.multiple_of)

    @property
    def max_caption_tokens(self) -> int:
        """Caption positions RoPE has: image tokens sit at position (caption length, r, c)."""
        return self.axes_lens[0] - 1

    def max_image_size(self) -> tuple[int, int]:
        """Largest (height, width) in pixels whose patch grid fits the RoPE tables."""
        pixels_per_token = 8 * self.patch_size
        return self.axes_lens[1] * pixels_per_token, self.axes_lens[2] * pixels_per_token


def folder_config(transformer: Path) -> NextDiTConfig:
    """A diffusers transformer folder's architecture, from its config.json (checked to be a Lumina DiT)."""
    raw = read_json_file(transformer / "config.json")
    if raw.get("_class_name", LUMINA_DIT) != LUMINA_DIT:
        raise ModelLoadError(f"{transformer} holds a {raw['_class_name']}, not a Lumina-Image 2.0 DiT ({LUMINA_DIT}).")
    return NextDiTConfig.from_dict(raw)
