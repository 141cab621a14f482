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
