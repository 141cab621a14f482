"""The engine end to end on the tiny model: determinism, seeds, cancel, previews, prompts, devices."""

import json
import threading

import numpy as np
import pytest
import torch

from core.devices import Placement, resolve_device, resolve_dtype
from core.errors import Cancelled, DeviceError, RequestError
from core.generation.prompts import SYSTEM_PROMPTS, full_prompt, system_prompt_text
from core.generation.request import GenerationRequest

SMALL = dict(width=64, height=48, steps=4)


def test_same_seed_same_pixels_and_seeds_increment(engine):
    first = engine.generate(GenerationRequest("a cat", seed=42, count=2, **SMALL))
    again = engine.generate(GenerationRequest("a cat", seed=43, **SMALL))
    assert [r.settings["seed"] for r in first] == [42, 43]
    assert np.array_equal(first[1].pixels, again[0].pixels)
    assert not np.array_equal(first[0].pixels, first[1].pixels)


def test_official_defaults_and_evaluation_count(engine):
    result = engine.generate(GenerationRequest("a cat", seed=1, width=64, height=64))[0]
    settings = result.settings
    assert (settings["solver"], settings["steps"], settings["cfg_trunc"], settings["cfg_renorm"], settings["shift"]) == (
        "midpoint", 18, 0.25, 1.0, 6.0)
    # midpoint: 2 conditional passes per step, plus an unconditional one for each evaluation with t < 0.25
    from core.sampling.schedule import official_grid

    grid = official_grid(18, 6.0)
    evaluation_times = [t for a, b in zip(grid, grid[1:]) for t in (a, (a + b) / 2)]
    assert result.evaluations == 36 + sum(t < 0.25 for t in evaluation_times)


def test_a_model_carries_its_own_sampling_defaults(tiny_model, tmp_path):
    import shutil

    from core.generation.engine import Engine
    from core.errors import ModelLoadError
    from core.models.sources import resolve_source

    folder = shutil.copytree(tiny_model, tmp_path / "model")
    defaults = folder / "sampling_defaults.json"
    defaults.write_text('{"cfg_trunc": 1.0, "steps": 5, "solver": "euler"}')
    engine = Engine(resolve_source(folder), device="cpu")
    resolved = engine.resolve(GenerationRequest("a cat"))
    assert (resolved.cfg_trunc, resolved.steps, resolved.solver, resolved.cfg_renorm) == (1.0, 5, "euler", 1.0)
    assert engine.resolve(GenerationRequest("a cat", steps=3)).steps == 3  # what a person sets wins
    matching_diffusers = engine.resolve(GenerationRequest("a cat", compat="diffusers"))
    assert (matching_diffusers.steps, matching_diffusers.solver) == (30, "euler")  # diffusers' own, as it promises

    for text, message in (('{"guidance": 3}', "unknown keys guidance"), ('{"cfg_trunc": -1}', "CFG truncation must"),
                          ('{"steps": 5', "is not valid JSON")):
        defaults.write_text(text)
        with pytest.raises(ModelLoadError, match=message):
            Engine(resolve_source(folder), device="cpu").load()


@pytest.mark.parametrize("solver", ["euler", "midpoint", "dpm"])
def test_every_solver_makes_an_image(engine, solver):
    result = engine.generate(GenerationRequest("a cat", seed=5, solver=solver, **SMALL))[0]
    assert result.image.size == (64, 48)
    assert np.isfinite(result.pixels).all()


def test_cancel_between_steps(engine):
    stop = threading.Event()
    seen = []

    def on_step(index, info):
        seen.append(info.step)
        if info.step == 2:
            stop.set()

    with pytest.raises(Cancelled):
        engine.generate(GenerationRequest("a cat", seed=1, **SMALL), on_step=on_step, should_stop=stop.is_set)
    assert seen == [1, 2]


def test_previews_every_step(engine):
    previews = []
    engine.generate(
        GenerationRequest("a cat", seed=1, **SMALL),
        on_step=lambda i, info: previews.append((info.step, info.total, info.eta, engine.preview(info))),
    )
    assert [p[0] for p in previews] == [1, 2, 3, 4]
    assert previews[-1][2] == 0.0
    # Small images are previewed by the VAE's own decode, at full size ...
    assert all(p[3].shape == (48, 64, 3) and p[3].dtype == np.uint8 for p in previews)
    # ... larger ones by the cheap linear map, at latent resolution.
    from core.sampling.sampler import StepInfo

    large = torch.randn(1, engine.config.in_channels, 40, 40)
    assert engine.preview(StepInfo(1, 2, 0.5, 0.1, large, large)).shape == (40, 40, 3)


def test_prompt_template_cache_and_truncation(engine):
    assert full_prompt("a cat", SYSTEM_PROMPTS["real"]).endswith("<Prompt Start> a cat")
    assert system_prompt_text("Draw like a child.") == "Draw like a child."
    with pytest.raises(RequestError, match="Unknown system prompt"):
        system_prompt_text("surreal")
    first = engine.prompts.encode("a cached prompt")
    assert engine.prompts.encode("a cached prompt") is first
    assert first.features.shape[1] == first.token_count == engine.prompts.count_tokens("a cached prompt")
    long_prompt = " ".join(f"word{i}" for i in range(400))
    notes = engine.prompt_warnings(engine.resolve(GenerationRequest(long_prompt)))
    assert any("tokens are dropped" in n for n in notes)
    encoded = engine.prompts.encode(full_prompt(long_prompt, SYSTEM_PROMPTS["real"]))
    assert encoded.token_count == 256 and encoded.truncated_text.endswith("word399")


def test_empty_prompt_is_allowed_with_a_note(engine):
    request = GenerationRequest("", seed=2, **SMALL)
    assert any("unconditional" in n for n in engine.prompt_warnings(engine.resolve(request)))
    assert engine.generate(request)[0].image.size == (64, 48)


def test_size_beyond_rope_is_refused(engine):
    with pytest.raises(RequestError, match="position tables"):
        engine.resolve(GenerationRequest("a cat", width=8208, height=64))


def test_low_vram_placement_runs_and_keeps_results(engine):
    normal = engine.generate(GenerationRequest("a cat", seed=9, **SMALL))[0].pixels
    saved = engine.placement
    engine.placement = Placement(engine.device, low_vram=True)
    try:
        offloaded = engine.generate(GenerationRequest("a cat", seed=9, **SMALL))[0].pixels
    finally:
        engine.placement = saved
    assert np.array_equal(normal, offloaded)


def test_devices():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_dtype("auto", resolve_device("cpu")).__repr__() == "torch.float32"
    with pytest.raises(DeviceError, match="fp16"):
        resolve_dtype("fp16", resolve_device("cpu"))
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="--device cpu"):
            resolve_device("cuda")


def test_images_name_the_model_and_store_its_path_only_when_asked(engine, tmp_path):
    """A shared image must not show the folders of the person who made it: name and hash by default."""
    from core.metadata import read_png_text

    folder = str(engine.source.dit if engine.source.is_single_file else engine.source.components)
    plain = engine.generate(GenerationRequest("a cat", seed=1, **SMALL), out_dir=tmp_path / "plain")[0]
    asked = engine.generate(GenerationRequest("a cat", seed=1, **SMALL), out_dir=tmp_path / "asked", model_path=True)[0]
    plain_text = read_png_text(plain.path)
    assert folder not in "".join(plain_text.values()) and "path" not in plain.record["model"]
    assert plain.record["model"]["name"] and plain.record["model"]["hash"]
    assert json.loads(read_png_text(asked.path)["lumina_studio"])["model"]["path"] == folder
