"""Every config error names the field and says what to do."""

import copy
import math

import pytest

from trainer.config import ConfigError, load_config, parse_config
from trainer.loop import stage_lr

VALID = {
    "version": 1,
    "name": "test",
    "base_model": "some-model",
    "datasets": [{"path": "data", "name": "all"}],
    "stages": [
        {"name": "low", "resolution": 256, "steps": 10, "batch_size": 8, "micro_batch_size": 2},
        {"name": "high", "resolution": 512, "steps": 5, "batch_size": 4, "micro_batch_size": 1},
    ],
}


def with_change(path, value):
    data = copy.deepcopy(VALID)
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


DELETE = object()

CASES = [
    (("memory",), {"blocks_to_swap": 4}, "memory.blocks_to_swap: needs [memory] fused_backward = true"),
    (("memory",), {"blocks_to_swap": -1}, "memory.blocks_to_swap: must be 0 (off)"),
    (("version",), DELETE, "version: is required: add 'version = 1'"),
    (("version",), 7, "version: 7 is not supported"),
    (("base_model",), DELETE, "base_model: is required but missing"),
    (("base_model",), "  ", "base_model: is empty"),
    (("learning_rate",), 1e-4, "learning_rate: unknown setting"),
    (("emadecay",), 0.9, "Did you mean 'ema_decay'?"),
    (("seed",), "zero", "seed: must be a whole number, not 'zero'"),
    (("name",), "a/b", "name: 'a/b' cannot be a folder name"),
    (("device",), "tpu", "device: 'tpu' is not one of auto, cpu, cuda"),
    (("precision",), "fp8", "precision: 'fp8' is not one of auto, bf16, fp32"),
    (("ema_decay",), 1.0, "ema_decay: 1.0 must be at least 0 (off) and below 1"),
    (("keep_checkpoints",), 0, "keep_checkpoints: must be at least 1"),
    (("optimizer",), {"betas": [0.9]}, "optimizer.betas: [0.9] must be two numbers"),
    (("optimizer",), {"grad_clip": 0}, "optimizer.grad_clip: must be above 0"),
    (("samples",), {"prompts": ["ok", " "]}, "samples.prompts[1]: is empty"),
    (("datasets",), DELETE, "datasets: at least one [[datasets]] table"),
    (("datasets",), {"path": "x"}, "datasets: must be written as [[datasets]] tables"),
    (("datasets", 0, "path"), DELETE, "datasets[0].path: is required but missing"),
    (("datasets", 0, "format"), "csv", "datasets[0].format: 'csv' is not one of auto, folder, imagefolder, jsonl"),
    (("datasets", 0, "system_prompt"), "relaistic", "datasets[0].system_prompt: 'relaistic' is not a system prompt"),
    (("datasets", 0, "repeats"), 0, "datasets[0].repeats: must be at least 1"),
    (("stages",), [], "stages: at least one [[stages]] table"),
    (("stages", 0, "steps"), DELETE, "stages[0].steps: is required but missing"),
    (("stages", 0, "resolution"), 250, "stages[0].resolution: 250 must be a multiple of 16"),
    (("stages", 0, "resolution"), 4096, "stages[0].resolution: 4096 is above 2048"),
    (("stages", 0, "steps"), 0, "stages[0].steps: must be at least 1"),
    (("stages", 0, "batch_size"), 7, "stages[0].batch_size: 7 is not a multiple of micro_batch_size 2"),
    (("stages", 0, "micro_batch_size"), 0, "stages[0].micro_batch_size: must be at least 1"),
    (("stages", 0, "lr"), 0, "stages[0].lr: 0 must be above 0"),
    (("stages", 0, "lr"), "fast", "stages[0].lr: must be a finite number, not 'fast'"),
    # A required key of the wrong type, and values TOML allows that no setting can use:
    (("stages", 0, "steps"), "six", "stages[0].steps: must be a whole number, not 'six'"),
    (("base_model",), 5, "base_model: must be text, not 5"),
    (("datasets", 0, "path"), 5, "datasets[0].path: must be text, not 5"),
    (("stages", 0, "resolution"), "32", "stages[0].resolution: must be a whole number, not '32'"),
    (("stages", 0, "lr"), math.nan, "stages[0].lr: must be a finite number, not nan"),
    (("optimizer",), {"eps": math.nan}, "optimizer.eps: must be a finite number, not nan"),
    (("optimizer",), {"grad_clip": math.inf}, "optimizer.grad_clip: must be a finite number, not inf"),
    (("stages", 0, "warmup_steps"), -1, "stages[0].warmup_steps: must be 0 or more"),
    (("stages", 0, "lr_schedule"), "cosin", "stages[0].lr_schedule: 'cosin' is not one of constant, linear, cosine"),
    (("stages", 0, "caption_dropout"), 1.5, "stages[0].caption_dropout: 1.5 must be in [0, 1)"),
    (("stages", 0, "sample_every"), -5, "stages[0]: sample_every and checkpoint_every must be 0"),
    (("stages", 0, "system_prompt"), "artsy", "stages[0].system_prompt: 'artsy' is not a system prompt name"),
    (("stages", 0, "datasets"), ["hq"], "stages[0].datasets: no dataset is named 'hq'"),
    (("stages", 1, "name"), "low", "stages[1].name: 'low' is used by more than one stage"),
]


@pytest.mark.parametrize(("path", "value", "message"), CASES, ids=[c[2][:40] for c in CASES])
def test_each_problem_names_the_field_and_the_fix(path, value, message):
    with pytest.raises(ConfigError) as caught:
        parse_config(with_change(path, value), "run.toml")
    assert message in str(caught.value)
    assert str(caught.value).startswith("run.toml has 1 problem")


def test_all_problems_are_reported_at_once():
    data = with_change(("stages", 0, "lr"), -1)
    data["stages"][1]["steps"] = 0
    data["keep_checkpoints"] = 0
    with pytest.raises(ConfigError, match="has 3 problems") as caught:
        parse_config(data, "run.toml")
    assert "stages[0].lr" in str(caught.value) and "stages[1].steps" in str(caught.value)


def test_custom_system_prompt_text_is_accepted():
    data = with_change(("stages", 0, "system_prompt"), "You draw flat shapes on plain backgrounds.")
    assert parse_config(data).stages[0].system_prompt.startswith("You draw")


def test_file_errors_and_relative_paths(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("version = 1\nname = [unclosed")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(broken)
    good = tmp_path / "sub" / "run.toml"
    good.parent.mkdir()
    good.write_text('version = 1\nbase_model = "m"\n[[datasets]]\npath = "../data"\n'
                    '[[stages]]\nname = "a"\nresolution = 64\nsteps = 1\nbatch_size = 1\nmicro_batch_size = 1\n')
    config = load_config(good)
    assert config.datasets[0].path == str((tmp_path / "data").resolve())  # relative to the config file
    assert config.stages[0].lr == 2e-4 and config.optimizer.eps == 1e-15  # defaults filled in


def test_resolved_copy_round_trips(tmp_path):
    config = parse_config(copy.deepcopy(VALID))
    config.write(tmp_path / "config.toml")
    again = load_config(tmp_path / "config.toml")
    assert again.to_dict() == {**config.to_dict(), "datasets": again.to_dict()["datasets"]}
    assert again.stages[1].micro_batch_size == 1 and again.optimizer.betas == [0.9, 0.95]


def test_presets_are_valid():
    from trainer.cli import PRESETS

    presets = sorted(PRESETS.glob("*.toml"))
    assert len(presets) >= 2
    for preset in presets:
        config = load_config(preset)
        assert len(config.stages) >= 2
        assert [s.resolution for s in config.stages] == sorted(s.resolution for s in config.stages)


def test_a_decay_needs_steps_after_the_warm_up():
    data = with_change(("stages", 0, "lr_schedule"), "cosine")
    data["stages"][0]["warmup_steps"] = 10
    with pytest.raises(ConfigError, match=r"stages\[0\].warmup_steps: 10 leaves no steps for the cosine decay"):
        parse_config(data)


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_learning_rate_schedules(schedule):
    stage = parse_config(with_change(("stages", 0, "lr_schedule"), schedule)).stages[0]
    stage.warmup_steps, stage.steps, stage.lr = 4, 104, 1e-3
    rates = [stage_lr(stage, step) for step in range(stage.steps)]
    assert rates[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])  # the warm-up is the same for all
    if schedule == "constant":
        assert rates[4:] == [1e-3] * 100
    else:
        assert all(a > b for a, b in zip(rates[4:], rates[5:]))  # falls at every step after the warm-up
        assert 0 < rates[-1] < 2e-5 and rates[4] > 0.99e-3
        halfway = rates[4 + 49]  # the middle of the decay: half the rate for both
        assert halfway == pytest.approx(5e-4, rel=0.02)


def test_stages_never_go_down_in_resolution(tmp_path):
    from trainer.config import parse_config

    stage = {"name": "a", "resolution": 512, "steps": 1, "batch_size": 1, "micro_batch_size": 1}
    data = {"version": 1, "base_model": "demo", "datasets": [{"path": str(tmp_path)}],
            "stages": [stage, {**stage, "name": "b", "resolution": 256}]}
    with pytest.raises(ConfigError, match=r"stages\[1\].resolution: 256 is below the stage before it \(512\)"):
        parse_config(data)
    data["stages"][1]["resolution"] = 512  # the same resolution again is fine (quality tuning)
    parse_config(data)


def test_an_unknown_key_hides_no_other_problem_and_a_misspelling_is_named():
    data = with_change(("stages", 0, "lr"), -1)
    data["stages"][0]["lr_shedule"] = "cosine"
    data["keep_chekpoints"] = 2
    with pytest.raises(ConfigError, match="has 3 problems") as caught:
        parse_config(data, "run.toml")
    text = str(caught.value)
    assert "stages[0].lr:" in text and "Did you mean 'lr_schedule'?" in text
    assert "Did you mean 'keep_checkpoints'?" in text and "Known keys" not in text
