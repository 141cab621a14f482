"""Crafted PNGs that once crashed the readers: each is a real PNG file with one odd text chunk."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

from PIL import Image, PngImagePlugin


def png_with_text(path: Path, chunks: list[tuple[str, str]], compressed: bool = False) -> Path:
    info = PngImagePlugin.PngInfo()
    for key, value in chunks:
        info.add_text(key, value, zip=compressed)
    Image.new("RGB", (8, 8), "white").save(path, pnginfo=info)
    return path


def raw_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_with_raw_chunk(path: Path, kind: bytes, data: bytes) -> Path:
    """A PNG with one chunk inserted before IDAT exactly as given (Pillow would refuse to write some)."""
    Image.new("RGB", (8, 8), "white").save(path)
    blob = path.read_bytes()
    at = blob.index(b"IDAT") - 4
    path.write_bytes(blob[:at] + raw_chunk(kind, data) + blob[at:])
    return path


def zip_bomb_ztxt(path: Path, key: str = "parameters", size: int = 64 << 20) -> Path:
    """A zTXt chunk that inflates to `size` bytes (Pillow refuses past its limit with ValueError)."""
    return png_with_raw_chunk(path, b"zTXt", key.encode() + b"\0\0" + zlib.compress(b"a" * size, 9))


_DEEP = "[" * 100_000 + "]" * 100_000
_BUILDERS = {
    "ztxt-bomb": lambda f: zip_bomb_ztxt(f / "bomb.png"),
    "itxt-bomb": lambda f: png_with_raw_chunk(f / "ibomb.png", b"iTXt",
                                              b"prompt\0\1\0\0\0" + zlib.compress(b"{" * (64 << 20), 9)),
    "comfy-list": lambda f: png_with_text(f / "comfy-list.png", [("prompt", json.dumps([1, 2, 3]))]),
    "comfy-nodes-not-dicts": lambda f: png_with_text(f / "comfy-str.png", [("prompt", json.dumps({"3": "KSampler"}))]),
    "comfy-cycle": lambda f: png_with_text(f / "comfy-cycle.png", [("prompt", json.dumps(
        {"1": {"class_type": "KSampler", "inputs": {"positive": ["2", 0]}},
         "2": {"class_type": "CLIPTextEncode", "inputs": {"text": ["2", 0]}}}))]),
    "invoke-string": lambda f: png_with_text(f / "invoke-str.png", [("invokeai_metadata", json.dumps("hello"))]),
    "deep-json": lambda f: png_with_text(f / "deep.png", [("lumina_studio", _DEEP)]),
    "deep-comfy": lambda f: png_with_text(f / "deep-comfy.png", [("prompt", '{"a":' * 50_000 + "1" + "}" * 50_000)]),
    "record-settings-list": lambda f: png_with_text(f / "rec-list.png", [("lumina_studio", json.dumps({"settings": [1]}))]),
    "width-nan": lambda f: png_with_text(f / "nan.png", [("lumina_studio", '{"settings": {"prompt": "a", "width": NaN}}')]),
    "width-huge": lambda f: png_with_text(f / "huge.png", [("lumina_studio", '{"settings": {"prompt": "a", "width": 1e400}}')]),
    "width-text": lambda f: png_with_text(f / "wide.png", [("lumina_studio", '{"settings": {"prompt": "a", "width": "wide"}}')]),
    "prompt-number": lambda f: png_with_text(f / "num.png", [("lumina_studio", '{"settings": {"prompt": 12345}}')]),
    "a1111-nan": lambda f: png_with_text(f / "a1111-nan.png", [("parameters", "a cat\nSteps: 4, CFG scale: nan, Seed: 1")]),
    "a1111-size": lambda f: png_with_text(f / "a1111-size.png", [("parameters", "a cat\nSteps: 4, Size: wide, Seed: 1")]),
    "a1111-seed-big": lambda f: png_with_text(f / "a1111-seed.png", [("parameters", f"a cat\nSteps: 4, Seed: {2**70}")]),
}
HOSTILE_NAMES = tuple(_BUILDERS)


def hostile_files(folder: Path, names=HOSTILE_NAMES) -> dict[str, Path]:
    """One file per fault found by hand (issue: nothing lost, nothing crashes)."""
    folder.mkdir(parents=True, exist_ok=True)
    return {name: _BUILDERS[name](folder) for name in names}
