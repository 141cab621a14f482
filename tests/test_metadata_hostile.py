"""Hostile and odd PNGs: read_settings answers each with MetadataError (or valid settings), in linear time."""

import json
import random
import sys
import time
from pathlib import Path

import pytest

from core.errors import MetadataError
from core.metadata import read_settings
from core.other_tools import parse_a1111
from core.generation.request import GenerationRequest, request_fields

sys.path.insert(0, str(Path(__file__).parent))
from hostile_pngs import HOSTILE_NAMES, hostile_files, png_with_raw_chunk, png_with_text  # noqa: E402


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_each_crafted_file_is_a_metadata_error_naming_the_file(tmp_path, name):
    path = hostile_files(tmp_path, [name])[name]
    with pytest.raises(MetadataError) as caught:
        read_settings(path)
    assert path.name in str(caught.value)


def test_bad_values_name_their_field(tmp_path):
    files = hostile_files(tmp_path)
    for name, field in (("width-nan", "width"), ("a1111-nan", "guidance"), ("prompt-number", "prompt"),
                        ("a1111-size", "Size"), ("a1111-seed-big", "seed")):
        with pytest.raises(MetadataError, match=field):
            read_settings(files[name])


def test_a_100kb_parameters_chunk_parses_at_once():
    line = "Steps: 4, " + ", ".join(f"Key{i}: value {i}" for i in range(8000))
    for text in ("p\nSteps: 4, " + " " * 100_000 + "x", "p\nSteps: 4, " + "\t " * 50_000 + "x", "a" * 100_000 + "\n" + line, "p\nSteps: " + "a" * 100_000, 'p\nSteps: 4, X: "' + '\\"' * 50_000):
        assert len(text) >= 100_000
        start = time.perf_counter()
        try:
            parse_a1111(text)
        except ValueError:
            pass
        assert time.perf_counter() - start < 0.1


def test_settings_text_over_the_cap_is_refused(tmp_path):
    path = png_with_text(tmp_path / "big.png", [("parameters", "a" * (1 << 20) + "x\nSteps: 4")])
    with pytest.raises(MetadataError, match="more than"):
        read_settings(path)


def _fuzz_texts(rng: random.Random):
    alphabet = ['"', "\\", ",", ":", " ", "\n", "a", "Steps", "Size", "x", "1", "{", "}", "[", "]", "NaN", "\udcff",
                "東", "\0", "Negative prompt:", "1e400", "-1"]
    base_record = {"settings": GenerationRequest("a cat").with_defaults().to_dict(), "model": {"name": "m"}}
    values = [None, True, 1.5, -3, 2**70, float("nan"), "wide", "", [1], {"a": 1}, "12", "Infinity"]
    for _ in range(150):
        size = rng.choice([0, 1, 10, 200, 5000, 60_000])
        noise = "".join(rng.choice(alphabet) for _ in range(size // 3 + 1))
        record = json.loads(json.dumps(base_record))
        key = rng.choice(sorted(record["settings"]) + ["model", "source", "sampler"])
        record["settings"][key] = rng.choice(values)
        graph = {str(i): {"class_type": rng.choice(["KSampler", "CLIPTextEncode", "EmptyLatentImage", 5]),
                          "inputs": {"text": rng.choice([["1", 0], "t", 3]), "seed": rng.choice(values),
                                     "positive": [str(rng.randrange(3)), 0], "width": rng.choice(values)}}
                 for i in range(3)}
        yield rng.choice([
            ("parameters", noise + "\nSteps: " + noise),
            ("parameters", "p\nSteps: 4, " + noise),
            ("lumina_studio", json.dumps(record, allow_nan=True)),
            ("lumina_studio", noise),
            ("prompt", json.dumps(graph, allow_nan=True)),
            ("prompt", noise),
            ("invokeai_metadata", json.dumps({k: rng.choice(values) for k in ("seed", "width", "cfg_scale", "model")})),
        ])


def test_fuzz_read_settings_only_raises_metadata_error_and_stays_fast(tmp_path):
    rng = random.Random(1234)
    for i, (key, value) in enumerate(_fuzz_texts(rng)):
        path = tmp_path / f"fuzz{i}.png"
        try:
            if rng.random() < 0.3:  # raw bytes: a chunk any writer could have produced, in any encoding
                encoded = value.encode("utf-8", "surrogatepass")
                kind = rng.choice([b"tEXt", b"iTXt", b"zTXt"])
                data = key.encode() + (b"\0" if kind == b"tEXt" else b"\0\0\0\0\0" if kind == b"iTXt" else b"\0\0")
                if kind == b"zTXt":
                    import zlib

                    encoded = zlib.compress(encoded)
                png_with_raw_chunk(path, kind, data + encoded)
            else:
                png_with_text(path, [(key, value.encode("utf-8", "replace").decode("utf-8"))],
                              compressed=rng.random() < 0.5)
        except (ValueError, UnicodeEncodeError):
            continue
        try:
            settings = read_settings(path)
        except MetadataError:
            continue
        finally:
            # a quadratic parser is slow every time; a busy machine's pause is not: the faster of two reads
            elapsed = min(_read_seconds(path) for _ in range(2))
            assert elapsed < 0.05 + 2e-6 * len(value), (key, len(value), elapsed)
        request_keys = {k: v for k, v in settings.items() if k in request_fields()}
        GenerationRequest(**{"prompt": "", **request_keys}).validate()  # whatever comes out is usable


def _read_seconds(path) -> float:
    start = time.perf_counter()
    try:
        read_settings(path)
    except MetadataError:
        pass
    return time.perf_counter() - start
