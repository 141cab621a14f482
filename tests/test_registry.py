"""The registry of models a person added."""

import shutil

import pytest
from safetensors.torch import load_file, save_file

from core.errors import ModelLoadError
from core.models.checkpoints import original_layout
from core.models.registry import add_model, find_model, list_models, model_hash, remove_model


def test_add_find_list_remove(tiny_model, tmp_path):
    entry = add_model(tiny_model, name="tiny")
    assert entry["kind"] == "diffusers" and entry["size_bytes"] > 0
    single = tmp_path / "dit.safetensors"
    save_file(original_layout(load_file(str(tiny_model / "transformer" / "diffusion_pytorch_model.safetensors"))), str(single))
    add_model(single, name="single", components=tiny_model)
    assert [m["name"] for m in list_models()] == ["tiny", "single"]
    source = find_model("single")
    assert source.is_single_file and source.components == tiny_model.resolve()
    assert find_model("tiny").components == tiny_model.resolve()
    remove_model("tiny")
    assert [m["name"] for m in list_models()] == ["single"]
    with pytest.raises(ModelLoadError, match="No model named"):
        remove_model("tiny")


def test_unknown_names_and_the_demo(tiny_model, tmp_path, monkeypatch):
    from core.models import registry

    with pytest.raises(ModelLoadError, match="neither an existing path"):
        find_model("nothing-like-this")
    with pytest.raises(ModelLoadError, match="reserved"):
        add_model(tiny_model, name="demo")
    monkeypatch.setattr(registry, "DEMO_FOLDER", tmp_path / "not-installed")
    for spec in ("demo", None, ""):
        with pytest.raises(ModelLoadError, match=r"demo model is missing .* `python -m trainer.demo`"):
            find_model(spec)
    assert registry.available_models() == []
    monkeypatch.setattr(registry, "DEMO_FOLDER", tiny_model)  # an installed demo: the default model
    assert find_model(None).name == "demo" and find_model("demo").components == tiny_model

    add_model(shutil.copytree(tiny_model, tmp_path / "mine"), name="mine")
    assert [m["name"] for m in registry.available_models()] == ["demo", "mine"]


def test_hash_is_cached_and_tracks_content(tiny_model, data_home):
    source = find_model(str(tiny_model))
    first = model_hash(source)
    assert len(first) == 64 and model_hash(source) == first
    assert (data_home / "cache" / "hashes.json").exists()


def test_describe_weights_reads_headers_only(tiny_model):
    from core.models.sources import describe_weights, resolve_source

    size, precision = describe_weights(resolve_source(tiny_model))
    assert size > 0 and precision == "fp32"


class _Evil:
    """Unpickling this runs a command: a weights-only load must refuse it, never run it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_models_add_checks_the_weights_before_registering(tiny_model, tmp_path):
    import pickle

    import torch

    weights = load_file(str(tiny_model / "transformer" / "diffusion_pytorch_model.safetensors"))
    fake = tmp_path / "fake.safetensors"
    fake.write_text("not really")
    truncated = tmp_path / "cut.safetensors"
    save_file(original_layout(weights), str(truncated))
    truncated.write_bytes(truncated.read_bytes()[:-100])
    other = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(other))
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"cap_embedder.0.weight": _Evil(marker)}))
    for path, message in ((fake, "not a readable .safetensors"), (truncated, "truncated"),
                          (other, "not a Lumina-Image 2.0 DiT"), (evil, "weights-only")):
        with pytest.raises(ModelLoadError, match=message):
            add_model(path, components=tiny_model)
    assert list_models() == [] and not marker.exists()

    good = tmp_path / "good.pth"
    torch.save(original_layout(weights), good)
    assert add_model(good, components=tiny_model)["kind"] == "single-file"


def test_one_model_has_one_name(tiny_model, monkeypatch):
    from core.models import registry

    add_model(tiny_model, name="tiny")
    with pytest.raises(ModelLoadError, match="already registered as 'tiny'"):
        add_model(tiny_model, name="again")
    monkeypatch.setattr(registry, "DEMO_FOLDER", tiny_model)
    assert find_model(str(tiny_model)).name == "demo"  # the demo's folder by path is still "demo"


def test_a_taken_name_is_refused_and_checkpoints_are_named_after_their_run_and_step(tiny_model, tmp_path):
    first = shutil.copytree(tiny_model, tmp_path / "runs" / "cats" / "checkpoints" / "step-00001200" / "model")
    second = shutil.copytree(tiny_model, tmp_path / "runs" / "cats" / "checkpoints" / "step-00002400" / "model")
    assert add_model(first)["name"] == "cats step 1200"
    assert add_model(second)["name"] == "cats step 2400"
    assert add_model(first)["name"] == "cats step 1200"  # the same model again: its entry is updated
    with pytest.raises(ModelLoadError, match="registered already"):
        add_model(shutil.copytree(tiny_model, tmp_path / "other"), name="cats step 1200")
    assert {m["name"]: m["path"] for m in list_models()}["cats step 1200"] == str(first.resolve())


def test_a_damaged_registry_lists_what_it_can(tiny_model, data_home):
    data_home.mkdir(parents=True, exist_ok=True)
    (data_home / "models.json").write_text('{"models": [{"name": 3}, "x", {"name": "ok", "path": "/x"}]}')
    assert [m["name"] for m in list_models()] == ["ok"]
    (data_home / "models.json").write_text('["not", "a", "table"]')
    assert list_models() == []


def test_hostile_weight_files_are_refused_with_a_message(tiny_model, tmp_path, capsys):
    from core.cli import main

    nested = tmp_path / "nested.safetensors"
    header = b"[" * 200_000 + b"]" * 200_000
    nested.write_bytes(len(header).to_bytes(8, "little") + header)
    sparse = tmp_path / "sparse.safetensors"
    with open(sparse, "wb") as handle:  # 1 TiB on paper, a few bytes on disk; its header claims nearly all of it
        handle.write((2**40 - 16).to_bytes(8, "little"))
        handle.truncate(2**40)
    for path, message in ((nested, "nested too deeply"), (sparse, "claims")):
        code = main(["models", "add", str(path), "--components", str(tiny_model)])
        err = capsys.readouterr().err
        assert code == 1 and message in err and "internal error" not in err and "memory" not in err, err
