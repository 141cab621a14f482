"""Shared fixtures: a tiny Lumina-Image 2.0 model built at test time, and an isolated data folder."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(autouse=True)
def data_home(tmp_path, monkeypatch) -> Path:
    """Each test gets its own Lumina Studio data folder (registry, library, caches)."""
    home = tmp_path / "lumina-home"
    monkeypatch.setenv("LUMINA_STUDIO_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A complete diffusers folder saved with the real save functions (random weights)."""
    from core.models.scaffold import build_model_folder

    return build_model_folder(tmp_path_factory.mktemp("models") / "tiny-lumina")


@pytest.fixture(scope="session")
def full_size_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model's folder with the 2.6B release's transformer: its config.json, and a weights file whose
    header declares every bf16 tensor while its data is a hole (a sparse file: no disk used). Good for what
    reads only configs and headers (memory estimates, --check); nothing may load its weights."""
    import json
    import shutil

    import torch

    from core.models.nextdit import NextDiT
    from core.models.nextdit_config import NextDiTConfig

    folder = tmp_path_factory.mktemp("models") / "full-size"
    shutil.copytree(tiny_model, folder)
    config = folder / "transformer" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **NextDiTConfig().to_diffusers_dict()}))
    with torch.device("meta"):
        shapes = {name: list(p.shape) for name, p in NextDiT(NextDiTConfig()).named_parameters()}
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 2 * math.prod(shape)
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    with open(folder / "transformer" / "diffusion_pytorch_model.safetensors", "wb") as weights:
        weights.write(len(text).to_bytes(8, "little") + text)
        weights.truncate(8 + len(text) + offset)
    return folder


@pytest.fixture(scope="session")
def engine(tiny_model, tmp_path_factory):
    from core.engine import Engine
    from core.models.sources import resolve_source

    os.environ["LUMINA_STUDIO_HOME"] = str(tmp_path_factory.mktemp("engine-home"))
    loaded = Engine(resolve_source(tiny_model), device="cpu")
    loaded.load()
    return loaded


@pytest.fixture(scope="session")
def onnx_home(tmp_path_factory) -> Path:
    """A data folder whose ONNX cache holds the tiny model's graphs once `onnx_engine` has run."""
    return tmp_path_factory.mktemp("onnx-home")


@pytest.fixture(scope="session")
def onnx_engine(tiny_model, onnx_home):
    """The tiny model on the ONNX Runtime CPU provider (exported once per test session)."""
    from core.engine import Engine
    from core.models.sources import resolve_source

    previous = os.environ.get("LUMINA_STUDIO_HOME")
    os.environ["LUMINA_STUDIO_HOME"] = str(onnx_home)
    try:
        exported = []
        loaded = Engine(resolve_source(tiny_model), device="cpu", backend="onnx",
                        on_export=lambda done, name: exported.append(name))
        loaded.load()
    finally:
        if previous is not None:
            os.environ["LUMINA_STUDIO_HOME"] = previous
    loaded.exported = exported
    return loaded


SHAPE_COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60), "yellow": (240, 220, 40)}


def draw_shapes_dataset(folder: Path, count: int = 16, size: int = 64) -> Path:
    """Flat coloured circles and squares with `.txt` captions (two alternatives each)."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    names = list(SHAPE_COLOURS)
    for i in range(count):
        colour, shape = names[i % len(names)], ("circle" if i % 2 else "square")
        image = Image.new("RGB", (size, size), (245, 245, 245))
        draw = ImageDraw.Draw(image)
        box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=SHAPE_COLOURS[colour])
        image.save(folder / f"shape{i:03d}.png")
        (folder / f"shape{i:03d}.txt").write_text(f"a {colour} {shape}\n{colour} {shape} on a white background")
    return folder


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory) -> Path:
    return draw_shapes_dataset(tmp_path_factory.mktemp("datasets") / "shapes")

