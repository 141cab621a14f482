"""export-checkpoint: a training checkpoint written for ComfyUI, the authors' code and diffusers loads back with
our own loader and draws the same image; the key names are the layouts our loader reads; metadata says what it is."""

import json
import shutil

import numpy as np
import pytest
from safetensors import safe_open

from core.cli import main
from core.generation.engine import Engine
from core.errors import ModelLoadError
from core.models.export import export_model
from core.models.layouts import detect_layout
from core.models.sources import resolve_source
from core.generation.request import GenerationRequest


def image(source) -> np.ndarray:
    engine = Engine(source, device="cpu", dtype="fp32")
    engine.load()
    return engine.generate(GenerationRequest("a red circle", width=64, height=48, steps=3, seed=7))[0].pixels


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "my-run"
    folder = run / "checkpoints" / "step-00000120"
    shutil.copytree(tiny_model, folder / "model")
    (run / "plan.json").write_text(json.dumps({"base_model": str(tiny_model)}))
    return folder


def test_each_format_loads_back_and_draws_the_same_image(checkpoint, tiny_model, tmp_path, capsys):
    reference = image(resolve_source(checkpoint / "model"))
    for fmt, suffix in (("comfyui", ".safetensors"), ("original", ".safetensors"), ("diffusers", "")):
        assert main(["export-checkpoint", str(checkpoint), "--format", fmt, "--dtype", "fp32",
                     "--out", str(tmp_path / f"{fmt}{suffix}")]) == 0
        out = tmp_path / f"{fmt}{suffix}"
        assert capsys.readouterr().out.strip() == str(out)
        weights = out / "transformer" / "diffusion_pytorch_model.safetensors" if fmt == "diffusers" else out
        with safe_open(str(weights), "pt") as handle:
            assert detect_layout(list(handle.keys())) == fmt
            assert handle.metadata().items() >= {"run": "my-run", "step": "120", "base_model": tiny_model.name}.items()
        source = resolve_source(out, None if fmt == "diffusers" else tiny_model)
        assert np.array_equal(image(source), reference), fmt
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing left half-written


def test_half_precision_and_the_default_name_and_refusals(checkpoint, tmp_path):
    assert main(["export-checkpoint", str(checkpoint), "--format", "comfyui"]) == 0  # bf16 by default
    out = checkpoint.parents[1] / "exports" / "my-run-step-120-comfyui-bf16.safetensors"
    with safe_open(str(out), "pt") as handle:
        assert {str(handle.get_tensor(k).dtype) for k in handle.keys()} == {"torch.bfloat16"}
    with pytest.raises(ModelLoadError, match="exists already"):
        export_model(checkpoint, "comfyui", "bf16", out)
    with pytest.raises(ModelLoadError, match="neither a training checkpoint"):
        export_model(tmp_path, "comfyui", "bf16", tmp_path / "x.safetensors")
