"""The validation loss: a held-out split, fixed noise and timesteps (the same checkpoint, the same number),
logged beside the training loss, and the best checkpoint kept."""

import json
import math
from pathlib import Path

import pytest
import torch

from trainer.config import ConfigError, DatasetConfig, RunConfig, StageConfig, parse_config
from trainer.datasets import Item, split_validation
from trainer.run_folder import RunFolder, best_checkpoint
from test_runs import train, write_config


def items(dataset: str, count: int, repeats: int = 1) -> list[Item]:
    return [Item(Path(f"/data/{dataset}/img-{i:03d}.png"), ["a caption"], "sys", dataset, 64, 64)
            for i in range(count) for _ in range(repeats)]


def config(**changes) -> RunConfig:
    return RunConfig(base_model="demo", datasets=[DatasetConfig(path="/data/a", name="a")],
                     stages=[StageConfig("s", 64, 1, 1, 1)], **changes)


def test_the_split_holds_out_each_datasets_share_the_same_images_every_time():
    found = items("a", 150, repeats=2) + items("b", 50)
    training, validation = split_validation(config(), found)  # unset: 5% once the datasets hold 100 images
    held = {item.image for item in validation}
    assert len(validation) == len(held) == math.ceil(0.05 * 150) + math.ceil(0.05 * 50)
    assert {item.dataset for item in validation} == {"a", "b"}
    assert not held & {item.image for item in training}  # repeats of a held-out image never train
    assert len(training) == 2 * (150 - 8) + (50 - 3)
    again = split_validation(config(), list(reversed(found)))[1]  # another order, the same images
    assert {item.image for item in again} == held
    assert split_validation(config(), items("a", 99))[1] == []  # fewer than 100 images: off
    assert split_validation(config(validation=0.0), found)[1] == []
    assert len(split_validation(config(validation=0.5), items("a", 1) + items("b", 4))[1]) == 2  # never a last image
    named = config(validation_dataset="b")
    training, validation = split_validation(named, found)
    assert {i.dataset for i in validation} == {"b"} and {i.dataset for i in training} == {"a"}


def test_validation_settings_are_checked():
    base = {"version": 1, "base_model": "demo", "datasets": [{"path": "x", "name": "a"}],
            "stages": [{"name": "s", "resolution": 64, "steps": 1, "batch_size": 1, "micro_batch_size": 1}]}
    for changes, message in (({"validation": 0.7}, "validation: 0.7 must be a share"),
                             ({"validation_dataset": "zz"}, "no dataset is named 'zz'"),
                             ({"validation": 0.1, "validation_dataset": "a"}, "not both"),
                             ({"validate_every": -1}, "validate_every")):
        with pytest.raises(ConfigError, match=message):
            parse_config({**base, **changes})


def test_a_run_logs_the_validation_loss_keeps_the_best_and_a_checkpoint_gives_the_same_number(
        tiny_model, shapes_dataset, tmp_path):
    from core.models import loader
    from core.models.sources import resolve_source
    from trainer.features import FeatureCache
    from trainer.validation import validation_loss

    stage = {"name": "low", "resolution": 32, "steps": 8, "batch_size": 2, "micro_batch_size": 2, "lr": 1e-3,
             "checkpoint_every": 2}
    path = write_config(tmp_path, tiny_model, shapes_dataset, validation=0.25, validate_every=3,
                        keep_checkpoints=1, stages={})
    text = path.read_text().split("[[stages]]")[0]  # one stage only
    import tomli_w

    path.write_text(text + tomli_w.dumps({"stages": [stage]}))
    result = train(path, "--run-dir", tmp_path / "run", home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert "validation loss: 4 images held out (25% of each dataset)" in result.stderr
    run = RunFolder(tmp_path / "run")
    events = run.read_events()
    validations = {e["step"]: e for e in events if e["event"] == "validation"}
    assert sorted(validations) == [2, 3, 4, 6, 8]  # each checkpoint, and every 3 steps between them
    assert all(v["images"] == 4 and v["resolution"] == 32 and v["weights"] == "ema" for v in validations.values())
    manifest = json.loads((run.path / "features" / "stage-0.json").read_text())
    assert len(manifest["validation"]) == 4 and len(manifest["items"]) == 12
    assert not {e["image"] for e in manifest["validation"]} & {e["image"] for e in manifest["items"]}
    # keep_checkpoints = 1 keeps the newest, and the best by validation loss
    checkpoints = run.checkpoint_list()
    best_step = min((s for s in (2, 4, 6, 8)), key=lambda s: (validations[s]["loss"], -s))
    assert {c.step for c in checkpoints} == {best_step, 8}
    assert best_checkpoint(checkpoints).step == best_step
    assert all(c.validation_loss == validations[c.step]["loss"] and c.stage == "low" for c in checkpoints)
    # a checkpoint's model gives the number logged for it, the same every time
    cpu = torch.device("cpu")
    model = loader.load_dit(resolve_source(run.latest_checkpoint() / "model"), torch.float32, cpu).eval()
    again = [validation_loss(model, FeatureCache(run.path), manifest["validation"], 3, 2, cpu, torch.float32, 1.0)
             for _ in range(2)]
    assert again[0] == again[1]
    assert again[0] == pytest.approx(validations[8]["loss"], rel=1e-5)
    tags = {tag for file in run.tensorboard.rglob("events.out.tfevents.*") for tag in _tags(file)}
    assert "validation_loss/32px" in tags


def _tags(file: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(file))
    accumulator.Reload()
    return set(accumulator.Tags()["scalars"])


def test_keep_checkpoints_never_deletes_the_best_one_at_the_highest_resolution(tmp_path):
    from trainer import checkpointing

    run = RunFolder(tmp_path / "run")
    losses = [(1, 0.20, 32), (2, 0.50, 64), (3, 0.30, 64), (4, 0.40, 64)]  # 0.20 is at a lower resolution
    for step, loss, resolution in losses:
        partial = checkpointing.begin(run, step)
        state = {"global_step": step, "stage": 0, "step_in_stage": step, "validation_loss": loss,
                 "validation_resolution": resolution}
        checkpointing.commit(run, partial, step, state, keep=1)
    assert [c.step for c in run.checkpoint_list()] == [3, 4]
    partial = checkpointing.begin(run, 5)
    checkpointing.commit(run, partial, 5, {"global_step": 5, "stage": 0, "step_in_stage": 5}, keep=1,
                         keep_best=False)
    assert [c.step for c in run.checkpoint_list()] == [5]
