"""Our Gemma-2 encoder, autoencoder and tokenizer (core/models/gemma2.py, vae.py, tokenizer.py) against
transformers' Gemma2Model, diffusers' AutoencoderKL and transformers' tokenizer: random models saved in
their real formats, loaded by our loaders, compared output for output."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from core.errors import ModelLoadError
from core.models.gemma2 import load_gemma2_encoder
from core.models.registry import demo_source
from core.models.tokenizer import PromptTokenizer
from core.models.vae import load_vae_folder

DEMO = demo_source().components


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemma2_penultimate_state_equals_transformers(tmp_path, dtype):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    # four layers (sliding, full, sliding, full) and a window shorter than the prompt, so both masks matter;
    # saved from the causal-LM class, whose names carry a "model." prefix
    config = Gemma2Config(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=5,
                          query_pre_attn_scalar=16, attn_logit_softcapping=2.0)
    reference = Gemma2ForCausalLM(config).eval()
    for parameter in reference.parameters():  # norms start at zero weight: make them matter
        parameter.data.normal_(0, 0.3)
    reference.save_pretrained(tmp_path / "text_encoder")
    ids = torch.randint(0, 97, (1, 23), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference.model.to(dtype)(ids, output_hidden_states=True).hidden_states[-2]
        ours = load_gemma2_encoder(tmp_path / "text_encoder", dtype, torch.device("cpu"))(ids)
    assert ours.dtype == dtype and ours.shape == expected.shape
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    assert (ours.float() - expected.float()).abs().max() / expected.float().abs().max() < tolerance
    encoder = load_gemma2_encoder(tmp_path / "text_encoder", dtype, torch.device("cpu"))
    assert len(encoder.layers) == 3  # the last layer is never built: Lumina reads the state before it


def test_gemma2_refuses_other_models_and_broken_weights(tmp_path):
    folder = tmp_path / "text_encoder"
    shutil.copytree(DEMO / "text_encoder", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(ModelLoadError, match="'llama' model; Lumina-Image 2.0 needs a Gemma-2"):
        load_gemma2_encoder(folder, torch.float32, torch.device("cpu"))
    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": 96}))
    with pytest.raises(ModelLoadError, match="has shape"):
        load_gemma2_encoder(folder, torch.float32, torch.device("cpu"))
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(ModelLoadError, match="not a readable .safetensors"):
        load_gemma2_encoder(folder, torch.float32, torch.device("cpu"))


@pytest.mark.parametrize("quant_convs", [False, True])
def test_autoencoder_equals_diffusers(tmp_path, quant_convs):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    reference = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                              up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 32),
                              layers_per_block=2, latent_channels=4, norm_num_groups=4, sample_size=32,
                              use_quant_conv=quant_convs, use_post_quant_conv=quant_convs).eval()
    reference.save_pretrained(tmp_path / "vae")
    ours = load_vae_folder(tmp_path / "vae", torch.float32, torch.device("cpu"))
    pixels = torch.rand(2, 3, 32, 24, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        latent = reference.encode(pixels).latent_dist.mode()
        assert torch.allclose(ours.encode_mode(pixels), latent, atol=1e-5)
        assert torch.allclose(ours.decode(latent), reference.decode(latent).sample, atol=1e-5)


def test_the_demo_models_components_equal_the_libraries():
    from diffusers import AutoencoderKL
    from transformers import AutoTokenizer, Gemma2Model

    texts = ["a red circle on the left, white background", "", "Ünïcode and émoji 🎨 and   spaces",
             "<bos> written out, and a very long " + "word " * 300]
    ours, theirs = PromptTokenizer(DEMO / "tokenizer"), AutoTokenizer.from_pretrained(str(DEMO / "tokenizer"))
    for text in texts:
        assert ours.ids(text) == theirs(text, truncation=False).input_ids
        ids = ours.ids(text)[5:40]
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True)
    reference = Gemma2Model.from_pretrained(str(DEMO / "text_encoder")).eval()
    encoder = load_gemma2_encoder(DEMO / "text_encoder", torch.float32, torch.device("cpu"))
    ids = torch.tensor([ours.ids(texts[0])])
    with torch.no_grad():
        assert torch.allclose(encoder(ids), reference(ids, output_hidden_states=True).hidden_states[-2], atol=1e-6)
    vae = AutoencoderKL.from_pretrained(str(DEMO / "vae")).eval()
    latent = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        decoded = load_vae_folder(DEMO / "vae", torch.float32, torch.device("cpu")).decode(latent)
        assert torch.allclose(decoded, vae.decode(latent).sample, atol=1e-5)
