"""Sharing the CPU: demo generation alone, beside the app's own workers (the demo captioner captioning a folder
and a CPU fine-tune of the demo model), and beside two busy programs that are not ours, each with PyTorch's
default threads (LUMINA_STUDIO_THREADS=all: every process takes every core, as before the budget) and with the
thread budget (core/cpu_budget.py), in one run. Captioning and training progress is counted during each
generation, to show they go on.

    python bench/bench_threads.py [--images 4]     (writes bench/out/bench_threads.json)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from core import cpu_budget  # noqa: E402
from results import save_results  # noqa: E402

# One process as the app's engine runs it: the demo model loaded once, images made under the budget.
GENERATE = """
import json, sys, time
import torch
from core.cpu_budget import CpuWork
from core.generation.engine import Engine
from core.models.registry import demo_source
from core.generation.request import GenerationRequest
engine = Engine(demo_source(), device="cpu")
engine.load()
engine.generate(GenerationRequest("a red circle", seed=0))  # warm-up
times, threads = [], set()
with CpuWork("generation") as work:
    for seed in range(int(sys.argv[1])):
        tick = time.perf_counter()
        engine.generate(GenerationRequest("a blue square above a yellow triangle", seed=seed),
                        on_step=lambda index, info: threads.add(work.refresh() or torch.get_num_threads()))
        times.append(time.perf_counter() - tick)
print(json.dumps({"seconds_per_image": sum(times) / len(times), "threads": sorted(threads)}))
"""


def environment(mode: str, home: Path) -> dict:
    env = {**os.environ, "LUMINA_STUDIO_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("LUMINA_STUDIO_THREADS", None)
    if mode == "default":
        env["LUMINA_STUDIO_THREADS"] = "all"
    return env


def generate(images: int, env: dict) -> dict:
    result = subprocess.run([sys.executable, "-c", GENERATE, str(images)], capture_output=True, text=True,
                            env=env, timeout=3600)
    if result.returncode:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def wait_for(condition, what: str, timeout: float = 600) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(what)
        time.sleep(0.5)


class AppWorkers:
    """The demo captioner captioning a folder over and over, and a CPU fine-tune of the demo model."""

    def __init__(self, work: Path, env: dict):
        from core.scenes.world import write_dataset

        self.work, self.env = work, env
        folder, scenes = work / "to-caption", work / "scenes"
        if not folder.exists():
            write_dataset(folder, 3000, seed=1, captions=False)
            write_dataset(scenes, 120, seed=2)
        preset = (ROOT / "resources" / "presets" / "train" / "demo-scenes-64.toml").read_text()
        config = work / "train.toml"
        long_run = preset.replace('path = "scenes"', f'path = "{scenes}"').replace("steps = 100", "steps = 100000")
        config.write_text(long_run)
        self.captions = work / "captions.jsonl"
        self.captions.unlink(missing_ok=True)
        loop = (f"while true; do {sys.executable} -m lumina_studio caption {folder} --mode overwrite --json; done "
                f">> {self.captions} 2>/dev/null")
        self.captioner = subprocess.Popen(["bash", "-c", loop], env=env, start_new_session=True)
        self.run_dir = work / f"run-{time.monotonic_ns()}"
        self.trainer = subprocess.Popen([sys.executable, "-m", "lumina_studio", "train", str(config), "--run-dir",
                                         str(self.run_dir)], env=env, start_new_session=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.steps() > 0 and self.captioned() > 0, "the captioner and the trainer to start")

    def captioned(self) -> int:
        try:
            return self.captions.read_text().count("\n")
        except OSError:
            return 0

    def steps(self) -> int:
        try:
            return sum('"event": "step"' in line for line in (self.run_dir / "events.jsonl").read_text().splitlines())
        except OSError:
            return 0

    def stop(self) -> None:
        """Both end for good: the trainer's own processes run in a group of their own."""
        from trainer.run_folder import RunFolder

        for group in RunFolder(self.run_dir).process_groups():
            os.killpg(group, signal.SIGKILL)
        for process in (self.captioner, self.trainer):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def busy_programs(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-threads-"))
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                          f"{platform.python_version()}", "images": args.images, "modes": {}}
    for mode in ("default", "budget"):
        env = environment(mode, work / f"home-{mode}")
        wait_for(lambda: cpu_budget.busy_threads() < 0.5, "the computer to be idle", 900)  # "alone" means alone
        row = {"alone": generate(args.images, env)}
        workers = AppWorkers(work, env)
        try:
            time.sleep(5)
            before = (workers.captioned(), workers.steps(), time.monotonic())
            row["beside_captioner_and_trainer"] = generate(args.images, env)
            seconds = time.monotonic() - before[2]
            row["meanwhile"] = {"captions_per_s": (workers.captioned() - before[0]) / seconds,
                                "train_steps_per_s": (workers.steps() - before[1]) / seconds}
        finally:
            workers.stop()
        busy = busy_programs(2)
        try:
            time.sleep(2)
            row["beside_two_busy_programs"] = generate(args.images, env)
        finally:
            for process in busy:
                process.kill()
                process.wait()
        for name in ("beside_captioner_and_trainer", "beside_two_busy_programs"):
            row[name]["slowdown"] = row[name]["seconds_per_image"] / row["alone"]["seconds_per_image"]
        results["modes"][mode] = row
        print(mode, json.dumps(row, indent=1), flush=True)
    print(save_results("bench_threads", results))


if __name__ == "__main__":
    main()
