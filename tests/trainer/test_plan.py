"""The wizard's arithmetic (trainer/plan.py), without the wizard and without torch in the module itself."""

import time
import tomllib
from pathlib import Path

from safetensors.torch import load_file

from core.storage import runs_dir
from trainer.plan import CHECKPOINT_COPIES, disk_needed, fresh_run_name, memory_estimates, model_bytes, model_facts

PRESET = Path(__file__).resolve().parents[2] / "resources" / "presets" / "train" / "demo-scenes-64.toml"


def config_for(model) -> dict:
    config = tomllib.loads(PRESET.read_text())
    config["base_model"] = str(model)
    return config


def dit_parameters(folder: Path) -> int:
    return sum(t.numel() for path in (folder / "transformer").glob("*.safetensors") for t in load_file(path).values())


def test_the_model_and_its_checkpoints_are_sized_from_the_headers(tiny_model, data_home):
    config = config_for(tiny_model)
    assert model_bytes(config) == 4 * dit_parameters(tiny_model)  # fp32, as the trainer keeps the weights
    config["keep_checkpoints"] = 3
    assert disk_needed(config) == model_bytes(config) * CHECKPOINT_COPIES * 4  # the kept ones and one being written
    assert model_bytes({"base_model": "no-such-model"}) == 0


def test_each_stage_gets_a_memory_estimate(tiny_model, data_home):
    config = config_for(tiny_model)
    facts = model_facts(config)
    assert facts is not None and facts[1] == dit_parameters(tiny_model)
    estimates = memory_estimates(facts, "cpu", 1)
    assert [e.stage for e in estimates] == [s["name"] for s in config["stages"]] and all(e.total > 0 for e in estimates)
    assert memory_estimates(None, "cpu", 1) is None
    config["stages"][0]["resolution"] = "large"  # a config still wrong: no estimate, no exception
    assert model_facts(config) is None


def test_a_fresh_run_name_replaces_an_earlier_date_and_is_free(data_home):
    today = time.strftime("%Y%m%d")
    name = fresh_run_name("portraits-20240101-0930")
    assert name.startswith(f"portraits-{today}-") and "20240101" not in name
    (runs_dir() / name).mkdir(parents=True)
    again = fresh_run_name(name)
    assert again != name and again.startswith(f"portraits-{today}-")
    assert fresh_run_name("-20240101-0930").startswith(f"run-{today}-")
