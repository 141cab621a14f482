"""Build complete Lumina-Image 2.0 model folders of any size, offline, with the real save functions.

Tests and benchmarks use small randomly initialised ones; the built-in demo model starts from one. The
result is a genuine diffusers folder (Lumina2Pipeline.save_pretrained): a Gemma-2 text encoder with a BPE
Gemma tokenizer trained on a given corpus, a Lumina2Transformer2DModel, an 8x-downsampling AutoencoderKL
with FLUX's latent scale and shift, and the flow-matching scheduler config with shift 6.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..generation.prompts import SYSTEM_PROMPTS

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]


@dataclass(frozen=True)
class ScaffoldSpec:
    hidden_size: int = 48
    num_layers: int = 2
    num_refiner_layers: int = 1
    num_attention_heads: int = 4  # head dim must split into three even RoPE axes (here 12 -> 4,4,4)
    num_kv_heads: int = 2
    multiple_of: int = 16
    text_width: int = 32
    text_layers: int = 2
    vocab_size: int = 600
    vae_channels: tuple[int, int, int, int] = (8, 16, 16, 16)
    latent_channels: int = 16
    sample_size: int = 16  # latent pixels: the model's default image is 8x this


DEFAULT_CORPUS = [
    *SYSTEM_PROMPTS.values(),
    "a red circle on the left of a blue square",
    "a photo of a cat sitting on a wooden table near the window",
    "an oil painting of a lighthouse on a cliff at sunset with dramatic clouds",
    "a green triangle above a yellow star on a white background",
]


def build_tokenizer(corpus: list[str], vocab_size: int, phrases: tuple[str, ...] = ()):
    """A real GemmaTokenizer (BPE with byte fallback, so any text encodes) trained on `corpus`.

    Merges stay inside words and never take in punctuation, as in Gemma's own vocabulary: a word is then
    the same token wherever it stands (a merge across words makes "blue square" one token and "blue" in
    "blue circle" another). Each of `phrases` becomes a single added token wherever it appears verbatim.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import GemmaTokenizer

    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    bpe.normalizer = normalizers.Replace(" ", "▁")
    # Only while training: merges learnt within these pieces never join two pieces, so applying them to
    # whole text later (GemmaTokenizer has no such split) gives the same tokens.
    bpe.pre_tokenizer = pre_tokenizers.Split(Regex("▁?[^▁\\p{P}]+|\\p{P}|▁"), behavior="isolated")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS + byte_tokens, show_progress=False)
    bpe.train_from_iterator(corpus, trainer)
    trained = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    tokenizer = GemmaTokenizer(vocab=trained["vocab"], merges=merges)
    bos = tokenizer.convert_tokens_to_ids("<bos>")
    # Gemma starts every sequence with <bos>; an empty prompt is then one token, as with the real model.
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)]
    )
    tokenizer.padding_side = "right"
    if phrases:
        tokenizer.add_tokens([AddedToken(phrase, normalized=False, single_word=False) for phrase in phrases])
    return tokenizer


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """Split a head's width into three even RoPE axes (caption position, row, column): 96 -> 32, 32, 32."""
    if head_dim % 2:
        raise ValueError(f"the attention head width must be even for RoPE, not {head_dim}")
    base = head_dim // 6 * 2
    extra = head_dim - 3 * base  # 0, 2 or 4 more, given to the image axes
    return base, base + extra // 2 // 2 * 2, base + extra - extra // 2 // 2 * 2


def build_pipeline(spec: ScaffoldSpec = ScaffoldSpec(), corpus: list[str] | None = None, seed: int = 0,
                   phrases: tuple[str, ...] = ()):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, Lumina2Pipeline, Lumina2Transformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(corpus or DEFAULT_CORPUS, spec.vocab_size, phrases)
    text_encoder = Gemma2Model(
        Gemma2Config(
            vocab_size=len(tokenizer),
            hidden_size=spec.text_width,
            intermediate_size=2 * spec.text_width,
            num_hidden_layers=spec.text_layers,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=spec.text_width // 2,
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    head_dim = spec.hidden_size // spec.num_attention_heads
    transformer = Lumina2Transformer2DModel(
        sample_size=spec.sample_size,
        patch_size=2,
        in_channels=spec.latent_channels,
        hidden_size=spec.hidden_size,
        num_layers=spec.num_layers,
        num_refiner_layers=spec.num_refiner_layers,
        num_attention_heads=spec.num_attention_heads,
        num_kv_heads=spec.num_kv_heads,
        multiple_of=spec.multiple_of,
        axes_dim_rope=rope_axes(head_dim),
        axes_lens=(300, 512, 512),
        cap_feat_dim=spec.text_width,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=spec.vae_channels,
        layers_per_block=1,
        latent_channels=spec.latent_channels,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=6.0)
    return Lumina2Pipeline(
        transformer=transformer.eval(), scheduler=scheduler, vae=vae.eval(), text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
    )


def build_model_folder(path: str | Path, spec: ScaffoldSpec = ScaffoldSpec(), corpus: list[str] | None = None,
                       seed: int = 0) -> Path:
    """Save a randomly initialised Lumina-Image 2.0 diffusers folder at `path`."""
    path = Path(path)
    build_pipeline(spec, corpus, seed).save_pretrained(str(path), safe_serialization=True)
    return path


def full_size_stand_in(small_model: str | Path, path: str | Path) -> Path:
    """A copy of a small model folder whose transformer is the 2.6B release's in shape only: its config.json, and
    a weights file whose header declares every bf16 tensor while its data is a hole (a sparse file: no disk
    used). For what reads only configs and headers (memory estimates, `train --check`, the wizard); loading its
    weights reads zeros."""
    import json
    import math
    import shutil

    import torch

    from .nextdit import NextDiT
    from .nextdit_config import NextDiTConfig

    path = Path(path)
    shutil.copytree(small_model, path)
    config = path / "transformer" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **NextDiTConfig().to_diffusers_dict()}))
    with torch.device("meta"):
        shapes = {name: list(p.shape) for name, p in NextDiT(NextDiTConfig()).named_parameters()}
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 2 * math.prod(shape)
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    with open(path / "transformer" / "diffusion_pytorch_model.safetensors", "wb") as weights:
        weights.write(len(text).to_bytes(8, "little") + text)
        weights.truncate(8 + len(text) + offset)
    return path
