"""Whole training runs through `lumina-studio train` (accelerate launch, real processes) on a tiny model.

One uninterrupted two-stage run is the reference; stopped, killed and resumed runs of the same config
must log the same losses step for step.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w

from fake_gpus import fake_nvidia_smi
from filesystems import mount_tmpfs, unmount_tmpfs
from trainer.run_folder import RunFolder

STAGES = [
    {"name": "low", "resolution": 32, "steps": 12, "batch_size": 4, "micro_batch_size": 2, "lr": 1e-3,
     "sample_every": 6, "checkpoint_every": 4},
    {"name": "high", "resolution": 64, "steps": 6, "batch_size": 4, "micro_batch_size": 2, "lr": 5e-4,
     "checkpoint_every": 3},
]
TOTAL = 18


def write_config(folder: Path, model: Path, dataset: Path, **changes) -> Path:
    stages = [dict(s) for s in STAGES]
    for index, stage_changes in changes.pop("stages", {}).items():
        stages[index].update(stage_changes)
    config = {"version": 1, "name": "tiny", "base_model": str(model), "seed": 3, "keep_checkpoints": 2,
              "datasets": [{"path": str(dataset), "min_side": 32}],
              "samples": {"prompts": ["a red circle", "a blue square"], "steps": 3},
              "stages": stages, **changes}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def train_command(*args) -> list[str]:
    return [sys.executable, "-m", "lumina_studio", "train", *map(str, args)]


def train(*args, home: Path, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "LUMINA_STUDIO_HOME": str(home)}
    return subprocess.run(train_command(*args), capture_output=True, text=True, timeout=timeout, env=env)


def start(*args, home: Path) -> subprocess.Popen:
    env = {**os.environ, "LUMINA_STUDIO_HOME": str(home)}
    return subprocess.Popen(train_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def losses(run: RunFolder) -> dict[int, float]:
    """Loss per step; when a step was run twice (after a resume) the later record counts."""
    return {r["step"]: r["loss"] for r in run.read_events() if r["event"] == "step"}


def wait_for(condition, timeout=120.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    raise TimeoutError("the run did not reach the expected point in time")


def worker_pid(run: RunFolder) -> int:
    return run.status()["pid"]


def reached_step(run: RunFolder, step: int) -> bool:
    return any(r.get("event") == "step" and r["step"] >= step for r in run.read_events())


@pytest.fixture(scope="session")
def reference_run(tiny_model, shapes_dataset, tmp_path_factory) -> RunFolder:
    folder = tmp_path_factory.mktemp("reference")
    config = write_config(folder, tiny_model, shapes_dataset)
    result = train(config, "--run-dir", folder / "run", home=folder / "home")
    assert result.returncode == 0, result.stderr
    return RunFolder(folder / "run")


def test_two_stage_run_trains_switches_stage_and_writes_everything(reference_run):
    run = reference_run
    events = run.read_events()
    starts = [e for e in events if e["event"] == "stage_start"]
    assert [(s["stage"], s["step"], s["resolution"], s["accumulation"]) for s in starts] == [
        ("low", 0, 32, 2), ("high", 12, 64, 2)]
    steps = [e for e in events if e["event"] == "step"]
    assert [s["step"] for s in steps] == list(range(1, TOTAL + 1))
    assert {s["resolution"] for s in steps if s["step"] <= 12} == {32}
    assert {s["resolution"] for s in steps if s["step"] > 12} == {64}
    for record in steps:
        assert record["grad_norm"] > 0 and record["samples_per_s"] > 0 and record["eta_s"] >= 0
    first, last = [s["loss"] for s in steps[:4]], [s["loss"] for s in steps[8:12]]
    assert sum(last) / 4 < 0.9 * sum(first) / 4  # the loss goes down within the first stage
    # Samples at steps 6 and 12 (stage low, 32 px) and at the end of stage high (64 px).
    samples = sorted(p.name for p in run.samples.glob("*.png"))
    assert samples == [f"step-{s:08d}-{i}.png" for s in (6, 12, 18) for i in (0, 1)]
    from PIL import Image

    assert Image.open(run.samples / "step-00000018-0.png").size == (64, 64)
    # keep_checkpoints = 2: the newest two remain, each complete and loadable.
    kept = sorted(p.name for p in run.checkpoints.iterdir())
    assert kept == ["step-00000015", "step-00000018"]
    assert json.loads((run.checkpoints / "step-00000018" / "state" / "trainer_state.json").read_text())[
        "global_step"] == TOTAL
    assert run.status()["state"] == "finished"
    assert list(run.tensorboard.rglob("events.out.tfevents.*"))
    assert (run.path / "config.toml").is_file() and json.loads(run.plan.read_text())["accumulation"] == [2, 2]
    report = json.loads(run.dataset_report.read_text())
    assert report["buckets"] == {"low": {"32x32": 16}, "high": {"64x64": 16}}
    latents = sorted((run.path / "features").glob("latents-*"))
    assert [p.name for p in latents] == ["latents-32", "latents-64"]


def test_final_checkpoint_loads_in_generate(reference_run, tmp_path):
    model = reference_run.latest_checkpoint() / "model"
    result = subprocess.run(
        [sys.executable, "-m", "core.cli", "generate", "a red circle", "--model", str(model), "--width", "64",
         "--height", "64", "--steps", "3", "--seed", "1", "--out", str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "LUMINA_STUDIO_HOME": str(tmp_path / "h")})
    assert result.returncode == 0, result.stderr
    assert Path(json.loads(result.stdout)["path"]).is_file()
    # The transformer holds the EMA weights, in diffusers' format.
    from diffusers import Lumina2Transformer2DModel

    Lumina2Transformer2DModel.from_pretrained(str(model / "transformer"))


def test_stop_file_and_sigterm_save_and_resume_exactly(reference_run, tiny_model, shapes_dataset, tmp_path):
    config = write_config(tmp_path, tiny_model, shapes_dataset)
    run = RunFolder(tmp_path / "run")
    process = start(config, "--run-dir", run.path, home=tmp_path / "home")
    wait_for(lambda: reached_step(run, 3))
    run.request_stop()
    assert process.wait(timeout=120) == 0
    assert run.status()["state"] == "stopped"
    stopped_at = max(losses(run))
    assert run.latest_checkpoint().name == f"step-{stopped_at:08d}"  # saved where it stopped

    process = start("--resume", run.path, home=tmp_path / "home")
    wait_for(lambda: reached_step(run, 14))  # into the second stage
    os.kill(worker_pid(run), signal.SIGTERM)
    assert process.wait(timeout=120) == 0
    assert run.status()["state"] == "stopped"

    result = train("--resume", run.path, home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert run.status()["state"] == "finished"
    assert losses(run) == pytest.approx(losses(reference_run), rel=1e-6)
    resumed = [e for e in run.read_events() if e["event"] == "resumed"]
    assert len(resumed) == 2


def test_sigterm_to_the_train_command_is_a_stop_request(tiny_model, shapes_dataset, tmp_path):
    """kill, `timeout` and service managers signal the command itself, not its training processes."""
    import psutil

    config = write_config(tmp_path, tiny_model, shapes_dataset)
    run = RunFolder(tmp_path / "run")
    process = start(config, "--run-dir", run.path, home=tmp_path / "home")
    wait_for(lambda: reached_step(run, 2))
    trainer = worker_pid(run)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0
    assert run.status()["state"] == "stopped" and run.latest_checkpoint() is not None
    assert not run.launcher_file.exists() and not psutil.pid_exists(trainer)


def test_resume_after_a_kill_matches_the_uninterrupted_run(reference_run, tiny_model, shapes_dataset, tmp_path):
    config = write_config(tmp_path, tiny_model, shapes_dataset)
    run = RunFolder(tmp_path / "run")
    process = start(config, "--run-dir", run.path, home=tmp_path / "home")
    wait_for(lambda: reached_step(run, 6))
    os.kill(worker_pid(run), signal.SIGKILL)
    assert process.wait(timeout=60) != 0
    assert run.status()["state"] == "failed"
    assert run.latest_checkpoint() is not None

    result = train("--resume", run.path, home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert losses(run) == pytest.approx(losses(reference_run), rel=1e-6)


def test_a_damaged_newest_checkpoint_falls_back_and_a_damaged_optimizer_file_is_a_clear_message(
        reference_run, tiny_model, shapes_dataset, tmp_path):
    config = write_config(tmp_path, tiny_model, shapes_dataset, keep_checkpoints=3)
    run = RunFolder(tmp_path / "run")
    process = start(config, "--run-dir", run.path, home=tmp_path / "home")
    wait_for(lambda: reached_step(run, 9))
    run.request_stop()
    assert process.wait(timeout=120) == 0
    newest, before = run.complete_checkpoints()[-1], run.complete_checkpoints()[-2]
    (newest / "state" / "trainer_state.json").write_text('{"global_step": "nine"}')

    result = train("--resume", run.path, home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    damaged = [e for e in run.read_events() if e["event"] == "checkpoint_damaged"]
    assert [e["checkpoint"] for e in damaged] == [newest.name] and "'global_step'" in damaged[0]["message"]
    assert [e["checkpoint"] for e in run.read_events() if e["event"] == "resumed"] == [before.name]
    assert losses(run) == pytest.approx(losses(reference_run), rel=1e-6)

    for optimizer in run.checkpoints.glob("step-*/state/optimizer.bin"):
        optimizer.write_bytes(b"\x80\x04garbage that is no pickle")
    run.set_status("stopped")
    result = train("--resume", run.path, home=tmp_path / "home")
    assert result.returncode != 0 and "no checkpoint of this run can be read" in result.stderr
    assert "weights_only" not in result.stderr and "weights_only" not in run.status()["message"]


def test_a_kill_while_saving_leaves_a_loadable_checkpoint(reference_run, tiny_model, shapes_dataset, tmp_path):
    # A checkpoint every step: most of the run is spent saving, and the kill lands inside a save.
    config = write_config(tmp_path, tiny_model, shapes_dataset, stages={0: {"checkpoint_every": 1}})
    run = RunFolder(tmp_path / "run")
    process = start(config, "--run-dir", run.path, home=tmp_path / "home")
    wait_for(lambda: reached_step(run, 3) and any(run.checkpoints.glob(".partial-*")), interval=0.002)
    os.kill(worker_pid(run), signal.SIGKILL)
    process.wait(timeout=60)

    latest = run.latest_checkpoint()
    assert latest is not None and (latest / "COMPLETE").exists()
    from core.models.loader import load_dit
    from core.models.sources import resolve_source

    import torch

    load_dit(resolve_source(latest / "model"), torch.float32, torch.device("cpu"))
    result = train("--resume", run.path, home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert not list(run.checkpoints.glob(".partial-*"))  # the interrupted save was cleaned up
    assert losses(run) == pytest.approx(losses(reference_run), rel=1e-6)


def test_two_cpu_processes_stay_in_sync_and_save_one_checkpoint(tiny_model, shapes_dataset, tmp_path):
    config = write_config(tmp_path, tiny_model, shapes_dataset, samples={"prompts": []})
    run = RunFolder(tmp_path / "run")
    result = train(config, "--cpu-processes", 2, "--run-dir", run.path, home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    events = run.read_events()
    assert {e["processes"] for e in events if e["event"] == "stage_start"} == {2}
    assert {e["accumulation"] for e in events if e["event"] == "stage_start"} == {1}  # 4 = 2 per process x 2
    checkpoints = [e for e in events if e["event"] == "checkpoint"]
    assert checkpoints and all(e["replicas_in_sync"] is True for e in checkpoints)
    state = run.latest_checkpoint() / "state"
    assert sorted(p.name for p in state.iterdir()) == [
        "ema.safetensors", "model.safetensors", "optimizer.bin", "random_states_0.pkl", "random_states_1.pkl",
        "trainer_state.json"]
    assert len(list(run.checkpoints.glob("step-*"))) == 2 and run.status()["state"] == "finished"


def test_launch_errors_are_one_clear_line(reference_run, tiny_model, shapes_dataset, tmp_path):
    home = tmp_path / "home"
    config = write_config(tmp_path, tiny_model, shapes_dataset)
    checks = [
        (["--run-dir", reference_run.path], "already holds a trained run: continue it with --resume"),
        (["--gpus", 2], "--gpus 2: PyTorch sees no CUDA GPU here"),
        (["--cpu-processes", 3], "stages[0].batch_size: 4 is not a multiple of micro_batch_size 2 x 3 process(es)"),
        (["--resume", tmp_path], "is not a training run folder"),
    ]
    for extra, message in checks:
        args = extra if extra[0] == "--resume" else [config, *extra]
        result = train(*args, home=home)
        assert result.returncode == 1 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr

    empty = tmp_path / "uncaptioned"
    shutil.copytree(shapes_dataset, empty)
    for caption in empty.glob("*.txt"):
        caption.unlink()
    result = train(write_config(tmp_path / "b", tiny_model, empty), home=home)
    assert result.returncode == 1 and "stages[0] ('low') has no usable images" in result.stderr

    result = train(write_config(tmp_path / "c", tmp_path / "no-model", shapes_dataset), home=home)
    assert result.returncode == 1 and "no-model" in result.stderr

    result = train(config, "--check", home=home)  # the report on stdout (to save with >), problems on stderr
    assert result.returncode == 0 and "memory: stage 'low'" in result.stdout and "nothing was trained" in result.stdout
    assert "dataset 'shapes'" in result.stdout or "usable" in result.stdout
    for flag in ("--stop", "--resume", "--sample-now"):
        result = train(flag, reference_run.path, home=home)
        assert result.returncode == 1 and "is finished" in result.stderr and "Its model:" in result.stderr, flag
    assert not reference_run.stop_flag.exists()
    damaged = RunFolder(shutil.copytree(reference_run.path, tmp_path / "damaged", symlinks=True))
    damaged.set_status("stopped", step=12)
    damaged.plan.write_text('{"processes": "two", "device": 7}')
    result = train("--resume", damaged.path, home=home)
    assert result.returncode == 1 and "plan.json is damaged" in result.stderr and "Traceback" not in result.stderr
    # --check leaves nothing behind, nor does a launch that failed its checks
    assert not (home / "runs").exists() or not list((home / "runs").iterdir())


def test_gpu_ids_are_checked_against_the_gpus_nvidia_smi_lists(tiny_model, shapes_dataset, tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path / "bin", monkeypatch, [("NVIDIA A", 24576), ("NVIDIA B", 24576)])
    config = write_config(tmp_path, tiny_model, shapes_dataset)
    for extra, message in ((["--gpu-ids", "2"], "--gpu-ids 2: each GPU once, from the ones this machine has: 0, 1"),
                           (["--gpu-ids", "0,0"], "each GPU once"),
                           (["--gpu-ids", "one"], "give GPU numbers separated by commas"),
                           (["--gpu-ids", "0,1", "--gpus", "1"], "disagree"),
                           (["--gpu-ids", "1"], "--gpus 1: PyTorch sees no CUDA GPU here")):  # the CPU build
        result = train(config, "--check", *extra, home=tmp_path / "home")
        assert result.returncode == 1 and message in result.stderr, result.stderr


@pytest.fixture
def small_disk(tmp_path):
    """A real 200 MB file system (tmpfs) for the run folder; needs root, as CI and the dev machines have."""
    mount = tmp_path / "disk"
    if not mount_tmpfs(mount, "size=200m"):
        pytest.skip("cannot mount a tmpfs here (not root)")
    yield mount
    unmount_tmpfs(mount)


def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint_and_says_what_a_save_needs(
        tiny_model, shapes_dataset, tmp_path, small_disk):
    config = write_config(tmp_path, tiny_model, shapes_dataset)
    run = RunFolder(small_disk / "run")
    process = start(config, "--run-dir", run.path, home=tmp_path / "home")
    wait_for(lambda: reached_step(run, 1))
    run.request_stop()
    assert process.wait(timeout=120) == 0
    intact = run.latest_checkpoint()
    one_save = sum(p.stat().st_size for p in intact.rglob("*") if p.is_file())
    free = shutil.disk_usage(small_disk).free
    leave = 256 * 1024  # room for events and logs, far less than one checkpoint
    assert one_save > 4 * leave
    with open(small_disk / "filler", "wb") as filler:
        os.posix_fallocate(filler.fileno(), 0, free - leave)

    result = train("--resume", run.path, home=tmp_path / "home")
    assert result.returncode != 0
    message = run.status()["message"]
    assert f"the last complete checkpoint, checkpoints/{intact.name}, is intact" in message, message
    assert "One save needs about" in message and "--resume" in message
    assert "SafetensorError" not in message and "Traceback" not in message
    assert not list(run.checkpoints.glob(".partial-*"))
    assert run.latest_checkpoint() == intact and (intact / "COMPLETE").exists()
    assert message in result.stderr


def test_sample_now_and_save_now_are_honoured_at_the_next_step(tiny_model, shapes_dataset, tmp_path):
    config = write_config(tmp_path, tiny_model, shapes_dataset,
                          stages={0: {"steps": 400, "sample_every": 0, "checkpoint_every": 0}})
    run = RunFolder(tmp_path / "run")
    process = start(config, "--run-dir", run.path, home=tmp_path / "home")
    try:
        wait_for(lambda: reached_step(run, 2))
        for flag in ("--sample-now", "--save-now"):
            assert train(flag, run.path, home=tmp_path / "home").returncode == 0
        wait_for(lambda: {"samples", "checkpoint"} <= {r["event"] for r in run.read_events()})
        events = run.read_events()
        asked_at = [r["step"] for r in events if r["event"] in ("samples", "checkpoint")]
        assert all(step < 400 for step in asked_at) and len(asked_at) == 2
        assert not run.sample_flag.exists() and not run.save_flag.exists()
        assert run.latest_checkpoint() is not None and list(run.samples.glob("*.png"))
    finally:
        run.request_stop()
        process.wait(timeout=120)


def test_the_lowest_memory_settings_train_stop_resume_and_make_a_loadable_model(tiny_model, shapes_dataset, tmp_path):
    """bf16 weights with stochastic rounding, Adafactor, the fused backward pass, the EMA on the CPU and one of
    the two joint blocks swapped to the CPU (its weights and optimizer state there: saved and resumed)."""
    from core.models.loader import load_dit
    from core.models.sources import resolve_source

    stages = {0: {"micro_batch_size": 4}, 1: {"micro_batch_size": 4}}  # fused: no accumulation
    config = write_config(tmp_path, tiny_model, shapes_dataset, stages=stages, optimizer={"name": "adafactor"},
                          memory={"weights": "bf16", "fused_backward": True, "ema_on_cpu": True,
                                  "blocks_to_swap": 1})
    refused = train(write_config(tmp_path / "acc", tiny_model, shapes_dataset, memory={"fused_backward": True}),
                    "--check", home=tmp_path / "home")
    assert refused.returncode == 1 and "cannot accumulate gradients" in refused.stderr
    too_many = train(write_config(tmp_path / "swap", tiny_model, shapes_dataset, stages=stages,
                                  memory={"fused_backward": True, "ema_on_cpu": True, "blocks_to_swap": 2}),
                     "--check", home=tmp_path / "home")
    assert too_many.returncode == 1 and "swap at most 1" in too_many.stderr
    checked = train(config, "--check", home=tmp_path / "home")
    assert checked.returncode == 0 and "gradients 0 B" in checked.stdout, checked.stdout + checked.stderr
    assert "1 block swapped to the CPU" in checked.stdout
    run = RunFolder(tmp_path / "run")
    process = start(config, "--run-dir", run.path, home=tmp_path / "home")
    wait_for(lambda: reached_step(run, 5))
    run.request_stop()
    assert process.wait(timeout=120) == 0 and run.status()["state"] == "stopped"
    result = train("--resume", run.path, home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert run.status()["state"] == "finished" and max(losses(run)) == TOTAL
    assert all(0 < e["grad_norm"] < 1e6 for e in run.read_events() if e["event"] == "step")
    import torch

    load_dit(resolve_source(run.latest_checkpoint() / "model"), torch.float32, torch.device("cpu"))


def test_eight_bit_adamw_resumes_exactly_and_a_run_keeps_its_optimizer(tiny_model, shapes_dataset, tmp_path):
    """A stop and resume in 8-bit AdamW with bf16 weights gives the losses of the same run uninterrupted (its
    8-bit moments and the rounding's seeds come back); a run whose config now names another optimizer is refused."""
    changes = {"optimizer": {"name": "adamw8bit"}, "memory": {"weights": "bf16"}, "samples": {"prompts": []},
               "stages": {0: {"steps": 6, "checkpoint_every": 3}, 1: {"steps": 2}}}
    whole = RunFolder(tmp_path / "whole")
    result = train(write_config(tmp_path / "a", tiny_model, shapes_dataset, **changes), "--run-dir", whole.path,
                   home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    run = RunFolder(tmp_path / "run")
    process = start(write_config(tmp_path / "b", tiny_model, shapes_dataset, **changes), "--run-dir", run.path,
                    home=tmp_path / "home")
    wait_for(lambda: reached_step(run, 2))
    run.request_stop()
    assert process.wait(timeout=120) == 0 and run.status()["state"] == "stopped"
    config = run.config.read_text()
    run.config.write_text(config.replace('name = "adamw8bit"', 'name = "adafactor"'))
    refused = train("--resume", run.path, home=tmp_path / "home")
    assert refused.returncode == 1 and "hold the optimizer state of adamw8bit" in refused.stderr
    assert "Put [optimizer] name and [memory] back" in refused.stderr
    run.config.write_text(config)
    result = train("--resume", run.path, home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert losses(run) == pytest.approx(losses(whole), rel=1e-6)
