"""The ONNX Runtime backend (CPU provider) against the PyTorch backend on the tiny model."""

import shutil

import numpy as np
import pytest
import torch

from core.backends.onnx_backend import Graph, OrtStages
from core.backends.torch_backend import TorchStages
from core.generation.engine import Engine
from core.errors import DeviceError
from core.models.sources import resolve_source
from core.generation.request import GenerationRequest


def test_first_use_exports_every_graph(onnx_engine):
    assert onnx_engine.exported == ["caption", "embed", "joint", "final", None]


@pytest.mark.parametrize("lengths,latent_size", [([7, 3], (8, 8)), ([4], (12, 6)), ([2, 9, 5], (4, 10))])
def test_stages_match_pytorch(engine, onnx_engine, lengths, latent_size):
    """Dynamic batch, caption length and resolution, padded captions included."""
    torch_stages, ort_stages = TorchStages(engine.dit), onnx_engine.stages
    assert isinstance(ort_stages, OrtStages) and ort_stages.provider == "CPUExecutionProvider"
    generator = torch.Generator().manual_seed(len(lengths))
    features = torch.randn(len(lengths), max(lengths), engine.config.cap_feat_dim, generator=generator)
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    x = torch.randn(len(lengths), engine.config.in_channels, *latent_size, generator=generator)
    t = torch.rand(len(lengths), generator=generator)
    outputs = []
    for stages in (torch_stages, ort_stages):
        with torch.no_grad():
            cond = stages.prepare(features, mask, latent_size)
            hidden, temb, signal = stages.embed(x, t, cond, with_signal=True)
            outputs.append((stages.final(stages.joint(hidden, temb, cond), temb, cond), signal))
    assert (outputs[0][0] - outputs[1][0]).abs().max() < 1e-4
    assert (outputs[0][1] - outputs[1][1]).abs().max() < 1e-4


@pytest.mark.parametrize("width,height,solver,batch_cfg", [(64, 64, "midpoint", False), (96, 48, "euler", True), (48, 80, "dpm", False)])
def test_images_match_pytorch(engine, onnx_engine, width, height, solver, batch_cfg):
    request = GenerationRequest("a red circle on the left", negative_prompt="blurry", width=width, height=height,
                                steps=6, seed=4, solver=solver, cfg_trunc=0.6)
    images = []
    for backend in (engine, onnx_engine):
        backend.batch_cfg = batch_cfg
        try:
            images.append(backend.generate(request)[0])
        finally:
            backend.batch_cfg = False
    assert np.abs(images[0].pixels - images[1].pixels).max() < 1e-4
    assert images[1].record["run"]["backend"] == "onnx"
    assert images[1].record["run"]["provider"] == "CPUExecutionProvider"


def test_export_is_cached(tiny_model, onnx_engine, onnx_home, monkeypatch):
    monkeypatch.setenv("LUMINA_STUDIO_HOME", str(onnx_home))
    exported = []
    again = Engine(resolve_source(tiny_model), device="cpu", backend="onnx", on_export=lambda d, n: exported.append(n))
    again.load()
    assert exported == [] and again.onnx_folder == onnx_engine.onnx_folder
    assert sorted(p.name for p in again.onnx_folder.iterdir()) == [
        "caption.onnx", "embed.onnx", "final.onnx", "joint.onnx", "manifest.json"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_clear_error(onnx_engine):
    with pytest.raises(DeviceError, match="cannot use CUDAExecutionProvider"):
        Graph(onnx_engine.onnx_folder / "final.onnx", torch.device("cuda"))
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        Engine(onnx_engine.source, device="cuda", backend="onnx")


def test_cpu_graphs_are_fp32_only(tiny_model):
    with pytest.raises(DeviceError, match="fp32"):
        Engine(resolve_source(tiny_model), device="cpu", dtype="bf16", backend="onnx")


def test_auto_backend_measures_once_and_remembers(tiny_model, onnx_engine, onnx_home, monkeypatch):
    from core.backends import choice

    monkeypatch.setenv("LUMINA_STUDIO_HOME", str(onnx_home))
    calls = []
    original = choice.seconds_per_pass
    monkeypatch.setattr(choice, "seconds_per_pass", lambda *a, **k: calls.append(1) or original(*a, **k))
    first = Engine(resolve_source(tiny_model), device="cpu", backend="auto")
    first.load()
    assert first.backend in ("torch", "onnx") and len(calls) == 2
    stored = choice.remembered(choice.choice_key(first.hash, first.device, "fp32"))
    assert stored == first.backend
    second = Engine(resolve_source(tiny_model), device="cpu", backend="auto")
    second.load()
    assert second.backend == first.backend and len(calls) == 2
    assert second.generate(GenerationRequest("a cat", width=64, height=64, steps=2, seed=1))[0].image.size == (64, 64)


def test_the_apps_auto_backend_starts_on_torch_at_once_and_measures_on_request(tiny_model, data_home, onnx_engine,
                                                                              onnx_home, monkeypatch):
    from core.backends import choice, onnx_export

    calls, exports = [], []
    original = choice.seconds_per_pass
    monkeypatch.setattr(choice, "seconds_per_pass", lambda *a, **k: calls.append(1) or original(*a, **k))
    monkeypatch.setattr(onnx_export, "export_graphs", lambda *a, **k: exports.append(1))
    graphs = []
    original_folder = onnx_export.cache_folder
    monkeypatch.setattr(onnx_export, "cache_folder", lambda *a: graphs.append(1) or original_folder(*a))
    shutil.copytree(onnx_home / "cache", data_home / "cache")  # the graphs exported once for the session
    engine = Engine(resolve_source(tiny_model), device="cpu", backend="auto", measure_backends=False)
    engine.load()
    assert engine.backend == "torch" and not engine.backend_measured and calls == []
    assert graphs == []  # the ONNX graphs are not even looked for before the first image
    best = engine.measure_backends()
    assert best in ("torch", "onnx") and engine.backend_measured and len(calls) == 2
    assert graphs and exports == []  # timed on the session's graphs: nothing exported twice
    again = Engine(resolve_source(tiny_model), device="cpu", backend="auto", measure_backends=False)
    again.load()
    assert again.backend == best and again.backend_measured


def test_a_stopped_measurement_leaves_no_export_behind(tiny_model, data_home):
    from core.errors import Cancelled

    engine = Engine(resolve_source(tiny_model), device="cpu", backend="auto", measure_backends=False)
    engine.load()
    asked = []
    with pytest.raises(Cancelled):  # stopped at the first graph's export, once PyTorch was timed
        engine.measure_backends(lambda: asked.append(1) or len(asked) > 2)
    assert len(asked) == 3 and not engine.backend_measured
    cache = data_home / "cache" / "onnx"
    assert not [p for p in cache.rglob("*") if p.is_file()]  # neither a partial export nor its temp folder
