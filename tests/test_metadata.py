"""PNG metadata: our own round trip, other tools' formats, atomic and safe writing."""

import errno
import json

import pytest
from PIL import Image, PngImagePlugin

from core import metadata
from core.errors import MetadataError, OutputError
from core.metadata import a1111_parameters, png_info, read_settings, write_png
from core.other_tools import parse_a1111
from core.generation.request import GenerationRequest

SETTINGS = {
    **GenerationRequest("a 東京 street at night, neon", negative_prompt="blurry, text").with_defaults().to_dict(),
    "seed": 1234,
}
MODEL = {"name": "Lumina-Image-2.0", "hash": "0123456789abcdef" * 4}


def save(tmp_path, stem="img"):
    record = {"format": metadata.FORMAT, "settings": SETTINGS, "model": MODEL}
    info = png_info(a1111_parameters(SETTINGS, MODEL), record)
    return write_png(Image.new("RGB", (16, 16), "red"), tmp_path, stem, info)


def test_round_trip_of_every_setting(tmp_path):
    path = save(tmp_path)
    settings = read_settings(path)
    assert settings["source"] == "lumina-studio" and settings["model"] == "Lumina-Image-2.0"
    for key, value in SETTINGS.items():
        assert settings[key] == value


def test_a1111_text_is_readable_alone(tmp_path):
    text = a1111_parameters(SETTINGS, MODEL)
    assert text.splitlines()[1] == "Negative prompt: blurry, text"
    parsed = parse_a1111(text)
    assert parsed["prompt"] == SETTINGS["prompt"] and parsed["negative_prompt"] == "blurry, text"
    assert (parsed["steps"], parsed["seed"], parsed["width"], parsed["height"]) == (18, 1234, 1024, 1024)
    assert (parsed["solver"], parsed["guidance"], parsed["model_hash"]) == ("midpoint", 4.0, "0123456789")


def test_non_latin_text_goes_to_itxt(tmp_path):
    path = save(tmp_path)
    with Image.open(path) as image:
        assert "東京" in image.text["parameters"]


def test_reads_a1111_images(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a castle\non a hill\nNegative prompt: ugly\n"
                  'Steps: 25, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 99, Size: 512x768, Model: "sd, xl", Hires upscale: 2')
    path = tmp_path / "a1111.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    settings = read_settings(path)
    assert settings["prompt"] == "a castle\non a hill" and settings["negative_prompt"] == "ugly"
    assert (settings["steps"], settings["seed"], settings["guidance"]) == (25, 99, 7.0)
    assert (settings["width"], settings["height"], settings["model"]) == (512, 768, "sd, xl")
    assert settings["sampler"] == "DPM++ 2M Karras"


def test_reads_comfyui_images(tmp_path):
    graph = {
        "3": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 20, "cfg": 4.5, "sampler_name": "euler",
                                                  "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 1024, "height": 768, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox in snow", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "lumina_2.safetensors"}},
    }
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", json.dumps(graph))
    info.add_text("workflow", "{}")
    path = tmp_path / "comfy.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    settings = read_settings(path)
    assert settings == {"source": "comfyui", "seed": 5, "steps": 20, "guidance": 4.5, "sampler": "euler",
                        "prompt": "a fox in snow", "negative_prompt": "", "width": 1024, "height": 768,
                        "model": "lumina_2.safetensors"}


def test_reads_invokeai_images(tmp_path):
    data = {"positive_prompt": "a boat", "negative_prompt": "fog", "seed": 7, "steps": 30, "cfg_scale": 5,
            "width": 832, "height": 1216, "scheduler": "dpmpp_2m", "model": {"name": "juggernaut"}}
    info = PngImagePlugin.PngInfo()
    info.add_text("invokeai_metadata", json.dumps(data))
    path = tmp_path / "invoke.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    settings = read_settings(path)
    assert (settings["prompt"], settings["negative_prompt"], settings["seed"], settings["guidance"]) == ("a boat", "fog", 7, 5)
    assert (settings["width"], settings["height"], settings["model"]) == (832, 1216, "juggernaut")


def test_unreadable_inputs(tmp_path):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    with pytest.raises(MetadataError, match="no generation settings"):
        read_settings(plain)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(MetadataError, match="not a readable image"):
        read_settings(broken)


def test_never_overwrites_and_leaves_no_temp_files(tmp_path):
    first, second = save(tmp_path, "same"), save(tmp_path, "same")
    assert (first.name, second.name) == ("same.png", "same-2.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same-2.png", "same.png"]


def test_disk_full_is_a_clear_error_and_keeps_existing_files(tmp_path, monkeypatch):
    kept = save(tmp_path, "kept")

    def full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(metadata.os, "fsync", full)
    with pytest.raises(OutputError, match="disk is full"):
        save(tmp_path, "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [kept.name]


def test_unwritable_folder(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="Cannot write images"):
        metadata.check_writable(blocker / "images")


def test_every_request_field_has_a_label():
    from core.generation.request import FIELD_LABELS, request_fields

    assert tuple(FIELD_LABELS) == request_fields()


def test_small_gaps_in_other_tools_files_are_read(tmp_path):
    """'CFG Scale' with a capital S, InvokeAI 3.x's model_name, and a size that is not a multiple of 16 (which
    lost the whole file): the prompt, seed and the rest load, and the nearest valid size is proposed."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a lighthouse at dusk\nSteps: 30, CFG Scale: 6.5, Seed: 1234, Size: 1368x768")
    path = tmp_path / "sd15.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    settings = read_settings(path)
    assert (settings["prompt"], settings["seed"], settings["steps"], settings["guidance"]) == (
        "a lighthouse at dusk", 1234, 30, 6.5)
    assert (settings["width"], settings["height"]) == (1376, 768)  # 1360 and 1376 are as near: as Generate rounds
    assert "1368x768 is not a multiple of 16" in settings["note"] and "1376x768" in settings["note"]
    invoke = PngImagePlugin.PngInfo()
    invoke.add_text("invokeai_metadata", json.dumps({"positive_prompt": "a boat", "seed": 7,
                                                     "model": {"model_name": "sd-1.5", "base_model": "sd-1"}}))
    Image.new("RGB", (8, 8)).save(tmp_path / "invoke3.png", pnginfo=invoke)
    assert read_settings(tmp_path / "invoke3.png")["model"] == "sd-1.5"
