"""Settings from other tools' PNGs (fixtures written from each tool's documented format): read right, or
refused with a MetadataError; mutated copies of them never crash the reader."""

import json
import random
import sys
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from core.errors import MetadataError
from core.metadata import read_settings
from core.generation.request import GenerationRequest, request_fields

sys.path.insert(0, str(Path(__file__).parent))
from hostile_pngs import png_with_text  # noqa: E402
from other_tools_pngs import FIXTURES, REAL  # noqa: E402


@pytest.mark.parametrize("name", FIXTURES)
def test_each_tools_file_is_read(tmp_path, name):
    chunk, text, expected = FIXTURES[name]
    settings = read_settings(png_with_text(tmp_path / f"{name}.png", [(chunk, text)]))
    assert {key: settings.get(key) for key in expected} == expected


def test_graphs_with_several_samplers_read_the_pass_that_makes_the_image(tmp_path):
    """Base + refiner: the base (not the refiner's seed 0); hires fix: the first pass (not the second's steps)."""
    for name in ("comfyui-base-refiner", "comfyui-hires-fix"):
        chunk, text, _ = FIXTURES[name]
        settings = read_settings(png_with_text(tmp_path / f"{name}.png", [(chunk, text)]))
        assert "2 samplers: the first pass was read" in settings["note"]
    one = read_settings(png_with_text(tmp_path / "one.png", [("prompt", FIXTURES["comfyui-lumina2"][1])]))
    assert "samplers" not in one.get("note", "")


def test_a_known_system_prompt_in_the_prompt_is_split_off(tmp_path):
    """ComfyUI's Lumina 2 workflow types the system prompt into the text: the form gets it as the system
    prompt, so it is not encoded twice; a custom one becomes custom text, an A1111 prompt is split too."""
    chunk, text, _ = FIXTURES["comfyui-lumina2"]
    settings = read_settings(png_with_text(tmp_path / "l.png", [(chunk, text)]))
    assert (settings["system_prompt"], settings["prompt"]) == ("real", "a cat sitting on a windowsill")
    assert "system prompt" in settings["note"]
    custom = read_settings(png_with_text(tmp_path / "c.png", [(
        "parameters", "You draw maps only. <Prompt Start> a harbour\nSteps: 20, Seed: 1, Size: 512x512")]))
    assert (custom["system_prompt"], custom["prompt"]) == ("You draw maps only.", "a harbour")
    no_marker = read_settings(png_with_text(tmp_path / "n.png", [("parameters", f"{REAL} a fox\nSteps: 9")]))
    assert (no_marker["system_prompt"], no_marker["prompt"]) == ("real", "a fox")
    plain = read_settings(png_with_text(tmp_path / "p.png", [("parameters", "a fox\nSteps: 9")]))
    assert plain["prompt"] == "a fox" and "system_prompt" not in plain


def test_json_in_parameters_never_lands_in_the_prompt(tmp_path):
    for name in ("swarmui", "fooocus", "ruinedfooocus"):
        chunk, text, _ = FIXTURES[name]
        settings = read_settings(png_with_text(tmp_path / f"{name}.png", [(chunk, text)]))
        assert "{" not in settings["prompt"]
    graph = FIXTURES["comfyui-lumina2"][1]  # a ComfyUI graph some savers put in `parameters`
    assert read_settings(png_with_text(tmp_path / "g.png", [("parameters", graph)]))["source"] == "comfyui"
    with pytest.raises(MetadataError, match="no setting this app can use"):
        read_settings(png_with_text(tmp_path / "e.png", [("parameters", json.dumps({"software": "X"}))]))


def test_utf8_in_a_latin1_chunk_is_decoded(tmp_path):
    """Stability Matrix writes UTF-8 bytes into tEXt (Latin-1 by the PNG standard): `#テスト`, not mojibake;
    real Latin-1 text stays as written."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "#テスト, café\nSteps: 20, Seed: 3, Size: 512x512".encode())
    Image.new("RGB", (8, 8)).save(tmp_path / "sm.png", pnginfo=info)
    assert read_settings(tmp_path / "sm.png")["prompt"] == "#テスト, café"
    latin = PngImagePlugin.PngInfo()
    latin.add_text("parameters", "café crème\nSteps: 20")
    Image.new("RGB", (8, 8)).save(tmp_path / "latin.png", pnginfo=latin)
    assert read_settings(tmp_path / "latin.png")["prompt"] == "café crème"


# ---- fuzzing with the fixtures ------------------------------------------------------------------------

_ODD_VALUES = [None, True, -1, 0, 2**70, 1e308, float("nan"), "", "12", "(1, 2)", "x" * 300, [], ["1", 0],
               ["999", 0], ["1", 1, 2], [["1", 0]], {}, {"class_type": "KSampler"}, "<Prompt Start>", "\0"]


def _mutate(value, rng: random.Random, node_ids: list[str]):
    """One random change somewhere in a JSON tree: a value replaced, a key dropped, a link rewired (cycles)."""
    if isinstance(value, dict) and value:
        key = rng.choice(sorted(value, key=str))
        roll = rng.random()
        if roll < 0.15:
            return {k: v for k, v in value.items() if k != key}
        if roll < 0.3:
            return {**value, key: rng.choice(_ODD_VALUES)}
        if roll < 0.4 and node_ids:
            return {**value, key: [rng.choice(node_ids), rng.randrange(3)]}
        return {**value, key: _mutate(value[key], rng, node_ids)}
    if isinstance(value, list) and value:
        index = rng.randrange(len(value))
        return value[:index] + [_mutate(value[index], rng, node_ids)] + value[index + 1:]
    return rng.choice(_ODD_VALUES)


def _mutated_texts(rng: random.Random):
    for _ in range(400):
        chunk, text, _ = FIXTURES[rng.choice(sorted(FIXTURES))]
        if text.startswith("{"):
            data = json.loads(text)
            node_ids = sorted(data) if chunk == "prompt" else []
            for _ in range(rng.randint(1, 4)):
                data = _mutate(data, rng, node_ids)
            yield chunk, json.dumps(data, allow_nan=True)
        else:
            at = rng.randrange(len(text))
            yield chunk, text[:at] + rng.choice(["", ",", ":", '"', "\n", "Steps: x", "Size: 7x"]) + text[at + 1:]


def test_fuzzed_files_of_other_tools_are_read_or_refused_never_crash(tmp_path):
    rng = random.Random(2026)
    read = 0
    for i, (chunk, text) in enumerate(_mutated_texts(rng)):
        path = png_with_text(tmp_path / f"m{i}.png", [(chunk, text)])
        try:
            settings = read_settings(path)
        except MetadataError as exc:
            assert path.name in str(exc)
            continue
        read += 1
        request_keys = {k: v for k, v in settings.items() if k in request_fields()}
        GenerationRequest(**{"prompt": "", **request_keys}).validate()  # whatever comes out is usable
    assert read > 100  # most mutations leave something to read: the fuzzing reaches the parsers' insides
