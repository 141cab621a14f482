"""The image autoencoder (FLUX's, and any diffusers AutoencoderKL of the same plain design) for generation:
encode an image to its latent mean, decode a latent to pixels.

Written here, not imported from diffusers, because importing diffusers' autoencoder costs about a second
before anything runs, a third of the start-up budget; its parameter names are diffusers' own, so a diffusers
`vae/` folder loads as it is, and tests/test_components_parity.py checks both directions against
diffusers' AutoencoderKL. (The demo model's VAE is trained with diffusers' class: trainer/vae.py.)
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

EPS = 1e-6


@dataclass(frozen=True)
class VAESettings:
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 16
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    mid_block_add_attention: bool = True
    use_quant_conv: bool = False
    use_post_quant_conv: bool = False
    scaling_factor: float = 0.3611
    shift_factor: float = 0.1159

    @classmethod
    def from_dict(cls, raw: dict, where: str) -> VAESettings:
        if raw.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
            raise ModelLoadError(f"{where} holds a {raw['_class_name']}, not an AutoencoderKL.")
        blocks = {*raw.get("down_block_types", ["DownEncoderBlock2D"]), *raw.get("up_block_types", ["UpDecoderBlock2D"])}
        if blocks - {"DownEncoderBlock2D", "UpDecoderBlock2D"} or raw.get("act_fn", "silu") != "silu":
            raise ModelLoadError(f"{where}: this autoencoder's blocks ({', '.join(sorted(blocks))}, activation "
                                 f"{raw.get('act_fn')}) are not the plain AutoencoderKL design Lumina uses.")
        try:
            return cls(
                in_channels=int(raw.get("in_channels", 3)),
                out_channels=int(raw.get("out_channels", 3)),
                latent_channels=int(raw.get("latent_channels", 4)),
                block_out_channels=tuple(int(c) for c in raw.get("block_out_channels", (64,))),
                layers_per_block=int(raw.get("layers_per_block", 1)),
                norm_num_groups=int(raw.get("norm_num_groups", 32)),
                mid_block_add_attention=bool(raw.get("mid_block_add_attention", True)),
                use_quant_conv=bool(raw.get("use_quant_conv", True)),
                use_post_quant_conv=bool(raw.get("use_post_quant_conv", True)),
                scaling_factor=float(raw.get("scaling_factor", 0.18215)),
                shift_factor=float(raw.get("shift_factor") or 0.0),
            )
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(f"{where}: the VAE config is wrong ({exc}).") from None


def group_norm(settings: VAESettings, channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(settings.norm_num_groups, channels, eps=EPS)


class ResnetBlock(nn.Module):
    def __init__(self, s: VAESettings, channels_in: int, channels_out: int):
        super().__init__()
        self.norm1 = group_norm(s, channels_in)
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.norm2 = group_norm(s, channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(channels_in, channels_out, 1) if channels_in != channels_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class SelfAttention(nn.Module):
    """One head over all pixels, with a residual connection."""

    def __init__(self, s: VAESettings, channels: int):
        super().__init__()
        self.group_norm = group_norm(s, channels)
        self.to_q, self.to_k, self.to_v = (nn.Linear(channels, channels) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h = self.group_norm(x).view(batch, channels, height * width).transpose(1, 2)
        q, k, v = (proj(h).unsqueeze(1) for proj in (self.to_q, self.to_k, self.to_v))
        h = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        h = self.to_out[0](h).transpose(1, 2).reshape(batch, channels, height, width)
        return x + h


class MidBlock(nn.Module):
    def __init__(self, s: VAESettings, channels: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(s, channels, channels), ResnetBlock(s, channels, channels)])
        self.attentions = nn.ModuleList([SelfAttention(s, channels)] if s.mid_block_add_attention else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](x)


class Sampler(nn.Module):
    """A block's 2x resampling conv: strided down (padded right and bottom), or nearest-neighbour up."""

    def __init__(self, channels: int, down: bool):
        super().__init__()
        self.down = down
        self.conv = nn.Conv2d(channels, channels, 3, stride=2 if down else 1, padding=0 if down else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Block(nn.Module):
    def __init__(self, s: VAESettings, channels_in: int, channels_out: int, layers: int, sampler: Sampler | None,
                 down: bool):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(s, channels_in if i == 0 else channels_out, channels_out)
                                     for i in range(layers))
        samplers = nn.ModuleList([sampler] if sampler is not None else [])
        if down:
            self.downsamplers = samplers
        else:
            self.upsamplers = samplers
        self.samplers = list(samplers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        for sampler in self.samplers:
            x = sampler(x)
        return x


class Encoder(nn.Module):
    def __init__(self, s: VAESettings):
        super().__init__()
        channels = s.block_out_channels
        self.conv_in = nn.Conv2d(s.in_channels, channels[0], 3, padding=1)
        last = len(channels) - 1
        self.down_blocks = nn.ModuleList(
            Block(s, channels[max(0, i - 1)], c, s.layers_per_block, Sampler(c, down=True) if i < last else None,
                  down=True) for i, c in enumerate(channels))
        self.mid_block = MidBlock(s, channels[-1])
        self.conv_norm_out = group_norm(s, channels[-1])
        self.conv_out = nn.Conv2d(channels[-1], 2 * s.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(x))))


class Decoder(nn.Module):
    def __init__(self, s: VAESettings):
        super().__init__()
        channels = tuple(reversed(s.block_out_channels))
        self.conv_in = nn.Conv2d(s.latent_channels, channels[0], 3, padding=1)
        self.mid_block = MidBlock(s, channels[0])
        last = len(channels) - 1
        self.up_blocks = nn.ModuleList(
            Block(s, channels[max(0, i - 1)], c, s.layers_per_block + 1, Sampler(c, down=False) if i < last else None,
                  down=False) for i, c in enumerate(channels))
        self.conv_norm_out = group_norm(s, channels[-1])
        self.conv_out = nn.Conv2d(channels[-1], s.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Autoencoder(nn.Module):
    def __init__(self, settings: VAESettings):
        super().__init__()
        self.config = settings
        self.encoder = Encoder(settings)
        self.decoder = Decoder(settings)
        latent = settings.latent_channels
        self.quant_conv = nn.Conv2d(2 * latent, 2 * latent, 1) if settings.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent, latent, 1) if settings.use_post_quant_conv else None

    def encode_mode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, H, W) in [-1, 1] -> the latent distribution's mean (B, C, H/8, W/8), unscaled."""
        moments = self.encoder(pixels)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return moments[:, : self.config.latent_channels]

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """An unscaled latent -> pixels in about [-1, 1]."""
        if self.post_quant_conv is not None:
            latent = self.post_quant_conv(latent)
        return self.decoder(latent)


def load_vae_folder(folder: Path, dtype: torch.dtype, device: torch.device) -> Autoencoder:
    """A diffusers `vae/` folder (config.json, diffusion_pytorch_model.safetensors)."""
    settings = VAESettings.from_dict(read_json_file(folder / "config.json"), str(folder))
    with torch.device("meta"):
        vae = Autoencoder(settings)
    assign_folder_weights(vae, folder, "VAE", dtype, device)
    return vae.eval().requires_grad_(False)
