"""Shared fixtures: a tiny Lumina-Image 2.0 model built at test time, and an isolated data folder."""

from __future__ import annotations

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
    """The 2.6B release's shape with no weights (core.models.scaffold.full_size_stand_in): for estimates only."""
    from core.models.scaffold import full_size_stand_in

    return full_size_stand_in(tiny_model, tmp_path_factory.mktemp("models") / "full-size")


@pytest.fixture(scope="session")
def engine(tiny_model, tmp_path_factory):
    from core.generation.engine import Engine
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
    from core.generation.engine import Engine
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

