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
    from core.models.loader import resolve_source

    os.environ["LUMINA_STUDIO_HOME"] = str(tmp_path_factory.mktemp("engine-home"))
    loaded = Engine(resolve_source(tiny_model), device="cpu")
    loaded.load()
    return loaded
