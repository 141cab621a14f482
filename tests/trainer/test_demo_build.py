"""`python -m trainer.demo`, the command that reproduces the built-in demo model, run whole in miniature:
a few scenes, a few VAE steps, the real demo config cut to a few DiT steps, a few evaluation prompts."""

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import tomli_w

from trainer.demo import SAMPLING_DEFAULTS, TRAIN_CONFIG


def miniature_config(folder: Path) -> Path:
    config = tomllib.loads(TRAIN_CONFIG.read_text())
    for stage in config["stages"]:
        stage.update(steps=3, batch_size=8, micro_batch_size=8, warmup_steps=1, sample_every=3, checkpoint_every=3)
    config["samples"]["steps"] = 2
    path = folder / "train.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def test_the_builder_runs_end_to_end(tmp_path):
    from core.models.sources import resolve_source
    from core.models.loader import sampling_defaults
    from core.sampling.cache_fit import read_fitted

    out = tmp_path / "demo-model"
    command = [sys.executable, "-m", "trainer.demo", "--work", str(tmp_path / "work"), "--out", str(out),
               "--scenes", "48", "--vae-steps", "3", "--config", str(miniature_config(tmp_path)),
               "--eval-count", "4"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "LUMINA_STUDIO_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr[-3000:]

    build = json.loads((tmp_path / "work" / "build.json").read_text())
    assert set(build["alignment"]) == {"default", "cache_0.3"} and build["total_seconds"] > 0
    assert build["vae_ceiling"]["single_count"] + build["vae_ceiling"]["pair_count"] == 4
    card = (out / "README.md").read_text()
    assert "48 scenes" in card and "Prompt alignment" in card
    assert len(read_fitted(out / "transformer")) == 5
    assert sampling_defaults(out) == SAMPLING_DEFAULTS
    assert resolve_source(out).components == out.resolve()
    run_steps = [json.loads(line)["step"] for line in (tmp_path / "work" / "run" / "events.jsonl").open()
                 if '"event": "finished"' in line]
    assert run_steps == [6]  # both stages ran
