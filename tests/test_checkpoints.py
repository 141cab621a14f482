"""Single-file checkpoints (original, ComfyUI, diffusers layouts) and every way a source can be broken."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from core.generation.engine import Engine
from core.errors import ModelLoadError
from core.models.checkpoints import original_layout
from core.models.layouts import derive_config, header_tensors, known_architecture, to_diffusers_layout
from core.models.loader import load_dit
from core.models.sources import resolve_source
from core.models.nextdit import NextDiTConfig
from core.generation.request import GenerationRequest

REQUEST = GenerationRequest("a red circle on the left", width=64, height=48, steps=4, seed=11)


def folder_state(tiny_model):
    return load_file(str(tiny_model / "transformer" / "diffusion_pytorch_model.safetensors"))


def generate(source) -> np.ndarray:
    engine = Engine(source, device="cpu")
    return engine.generate(REQUEST)[0].pixels


@pytest.fixture(scope="module")
def folder_pixels(tiny_model):
    return generate(resolve_source(tiny_model))


def test_original_layout_round_trip_and_config(tiny_model):
    state = folder_state(tiny_model)
    original = original_layout(state)
    assert "cap_embedder.0.weight" in original and "layers.0.attention.qkv.weight" in original
    assert "context_refiner.0.attention_norm1.weight" in original
    back = to_diffusers_layout(original)
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)
    derived = derive_config(back)
    saved = NextDiTConfig.from_dict(json.loads((tiny_model / "transformer" / "config.json").read_text()))
    assert derived.hidden_size == saved.hidden_size and derived.num_layers == saved.num_layers
    assert derived.ffn_inner_dim == saved.ffn_inner_dim and derived.axes_dim_rope == saved.axes_dim_rope
    assert (derived.num_attention_heads, derived.num_kv_heads) == (saved.num_attention_heads, saved.num_kv_heads)


@pytest.mark.parametrize("layout", ["original", "comfyui", "diffusers", "original-pth"])
def test_single_file_gives_the_same_image_as_the_folder(tiny_model, folder_pixels, tmp_path, layout):
    state = folder_state(tiny_model)
    if layout.startswith("original"):
        state = original_layout(state)
    if layout == "comfyui":  # all-in-one file: DiT under a prefix, beside text encoder and VAE tensors
        state = {"model.diffusion_model." + k: v for k, v in original_layout(state).items()}
        state["vae.decoder.conv_in.weight"] = torch.zeros(2, 2)
        state["text_encoders.gemma2_2b.embed.weight"] = torch.zeros(2, 2)
    if layout == "original-pth":
        path = tmp_path / "consolidated.00-of-01.pth"
        torch.save(state, path)
    else:
        path = tmp_path / "lumina_2_model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    source = resolve_source(path, components=tiny_model)
    assert source.is_single_file
    assert np.abs(generate(source) - folder_pixels).max() == 0.0
    if path.suffix == ".safetensors":  # the header alone (no weights read, no torch) gives the same DiT
        shapes = {name: tensor.shape for name, tensor in header_tensors(path).items()}
        assert shapes == {name: tuple(tensor.shape) for name, tensor in folder_state(tiny_model).items()}
        assert known_architecture(source) == derive_config(folder_state(tiny_model))


def test_single_file_finds_components_beside_it(tiny_model, tmp_path):
    shutil.copytree(tiny_model, tmp_path / "Lumina-Image-2.0")
    path = tmp_path / "finetune.safetensors"
    save_file(original_layout(folder_state(tiny_model)), str(path))
    assert resolve_source(path).components == (tmp_path / "Lumina-Image-2.0").resolve()


def test_single_file_without_components_says_what_to_pass(tiny_model, tmp_path):
    path = tmp_path / "alone" / "dit.safetensors"
    path.parent.mkdir()
    save_file(folder_state(tiny_model), str(path))
    with pytest.raises(ModelLoadError, match="--components"):
        resolve_source(path)


def test_truncated_safetensors(tiny_model, tmp_path):
    data = (tiny_model / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        load_dit(resolve_source(path, components=tiny_model), torch.float32, torch.device("cpu"))


def test_garbage_pth_is_refused(tiny_model, tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelLoadError, match="weights-only"):
        load_dit(resolve_source(path, components=tiny_model), torch.float32, torch.device("cpu"))


def test_pickle_with_code_is_refused(tiny_model, tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weights": torch.zeros(1), "callback": print}, path)
    with pytest.raises(ModelLoadError):
        load_dit(resolve_source(path, components=tiny_model), torch.float32, torch.device("cpu"))


def test_other_architecture_is_named(tiny_model, tmp_path):
    path = tmp_path / "sdxl.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4)}, str(path))
    with pytest.raises(ModelLoadError, match="not a Lumina-Image 2.0 DiT"):
        load_dit(resolve_source(path, components=tiny_model), torch.float32, torch.device("cpu"))


def test_missing_tensor_is_named(tiny_model, tmp_path):
    state = folder_state(tiny_model)
    state.pop("layers.1.feed_forward.linear_2.weight")
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelLoadError, match="layers.1.feed_forward.linear_2.weight"):
        load_dit(resolve_source(path, components=tiny_model), torch.float32, torch.device("cpu"))


@pytest.mark.parametrize(
    "breakage,message",
    [
        ("model_index.json", "no model_index.json"),
        ("vae", "missing vae/"),
        ("transformer/diffusion_pytorch_model.safetensors", "has no weights"),
        ("class", "not Lumina-Image 2.0"),
    ],
)
def test_broken_folders(tiny_model, tmp_path, breakage, message):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    if breakage == "class":
        (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    elif (folder / breakage).is_dir():
        shutil.rmtree(folder / breakage)
    else:
        (folder / breakage).unlink()
    with pytest.raises(ModelLoadError, match=message):
        Engine(resolve_source(folder), device="cpu").load()


def test_missing_path():
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_source("/nonexistent/lumina")


def test_wrong_text_encoder(tiny_model, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "text_encoder" / "config.json").read_text())
    config["model_type"] = "llama"
    (folder / "text_encoder" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="Gemma-2"):
        Engine(resolve_source(folder), device="cpu").load()


@pytest.mark.parametrize("tensors, message", [
    ({"cap_embedder.0.weight": (4, 4)}, "incomplete"),
    ({"cap_embedder.0.weight": (4, 4), "x_embedder.weight": (8,)}, "shapes"),
    ({"cap_embedder.0.weight": (4, 4), "x_embedder.weight": (8, 16), "layers.0.attention.qkv.weight": ()}, "shapes"),
    ({"time_caption_embed.caption_embedder.0.weight": (4,), "x_embedder.weight": (8,),
      "layers.0.attn.norm_q.weight": (), "layers.0.attn.to_q.weight": (8, 8), "layers.0.attn.to_k.weight": (8, 8),
      "layers.0.feed_forward.linear_1.weight": (8, 8), "norm_out.linear_2.weight": (8, 8)}, "shapes"),
])
def test_a_header_that_is_no_dit_is_one_clear_message(tmp_path, tensors, message):
    path = tmp_path / "odd.safetensors"
    save_file({name: torch.zeros(shape) for name, shape in tensors.items()}, str(path))
    with pytest.raises(ModelLoadError, match=message):
        derive_config(header_tensors(path))
