"""lumina-studio compare: the sample prompts by the base model and three checkpoints with the same seeds, with
each one's validation loss; training samples are reused, and a drawn cell is the sample the training drew."""

import json
import shutil
import subprocess
import sys

import numpy as np
import tomli_w
from PIL import Image

from test_runs import train, write_config
from trainer.run_folder import RunFolder


def compare(run: RunFolder, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lumina_studio", "compare", str(run.path), *args],
                          capture_output=True, text=True, timeout=600)


def test_the_grid_of_the_base_and_three_checkpoints(tiny_model, shapes_dataset, tmp_path):
    stage = {"name": "low", "resolution": 32, "steps": 6, "batch_size": 2, "micro_batch_size": 2, "lr": 1e-3,
             "checkpoint_every": 2, "sample_every": 2}
    path = write_config(tmp_path, tiny_model, shapes_dataset, validation=0.25, keep_checkpoints=3)
    path.write_text(path.read_text().split("[[stages]]")[0] + tomli_w.dumps({"stages": [stage]}))
    assert train(path, "--run-dir", tmp_path / "run", home=tmp_path / "home").returncode == 0
    run = RunFolder(tmp_path / "run")
    first = compare(run, "--json")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == str(run.path / "compare" / "grid.png")
    progress = [json.loads(line) for line in first.stderr.splitlines() if line.startswith("{")]
    assert progress[-1] == {"done": 8, "total": 8}
    grid = json.loads((run.path / "compare" / "grid.json").read_text())
    assert [c["label"] for c in grid["columns"]] == ["base model", "step 2", "step 4", "step 6"]
    assert grid["prompts"] == ["a red circle", "a blue square"]
    losses = [c["validation_loss"] for c in grid["columns"]]
    saved = {c.step: c.validation_loss for c in run.checkpoint_list()}
    assert losses[1:] == [saved[2], saved[4], saved[6]] and losses[0] > 0  # the base model measured here
    for column, cells in zip(grid["columns"][1:], grid["cells"][1:]):  # the training's samples, reused
        for row, cell in enumerate(cells):
            sample = run.samples / f"step-{int(column['label'].split()[1]):08d}-{row}.png"
            assert (run.path / "compare" / cell).read_bytes() == sample.read_bytes()
    with Image.open(run.path / "compare" / "grid.png") as image:
        assert image.size[0] > 4 * 192 and image.size[1] > 2 * 192
    # a cell drawn by compare is the image the training drew: same seed, settings and weights
    shutil.rmtree(run.path / "compare" / "step-00000004")
    kept = run.path / "kept-samples"
    kept.mkdir()
    for sample in run.samples.glob("step-00000004-*.png"):
        sample.rename(kept / sample.name)
    again = compare(run, "--checkpoints", "step-00000004", "--no-base")
    assert again.returncode == 0, again.stderr
    for row in range(2):
        drawn = np.asarray(Image.open(run.path / "compare" / "step-00000004" / f"cell-{row}.png"))
        assert np.array_equal(drawn, np.asarray(Image.open(kept / f"step-00000004-{row}.png")))
    bad = compare(run, "--checkpoints", "step-00000099")
    assert bad.returncode == 1 and "no complete checkpoint step-00000099" in bad.stderr
