"""GPU sweep for the demo model's training recipe and step-cache threshold: which changes to
resources/demo/train.toml are worth a 40-minute CPU build, measured in minutes on one GPU.

Every variant is the demo's DiT training (`python -m trainer`, fp32, the same scenes and base model as
the CPU build) with a few config keys changed, then the alignment evaluator on the same 200 prompts
(seed 1000) as the model card. Variants run as parallel processes on one GPU. The shipped model is also
evaluated with the cache off and at several thresholds (its own polynomial). A GPU run is not the CPU
build: the control variant (the shipped recipe unchanged) says how far the two differ.
Writes $OUT/gpu_demo_sweep.json (or bench/out/) and prints a table last.

    python bench/gpu_demo_sweep.py --base build/demo/base          # on the GPU machine
    python bench/gpu_demo_sweep.py --base B --only control,cache:0.3   # some jobs only
    python bench/gpu_demo_sweep.py --base B --small                # the same code in miniature on a CPU

The tiny DiT is bound by kernel launches (17 steps/s on an H200 with seven runs side by side, 3.6 on two
CPU cores), so all six variants do not fit one 10-minute device call: give each call one or two.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import tomli_w

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.demo import EVAL_SEED, SEED, TRAIN_CONFIG, latest_model, load_engine  # noqa: E402
from trainer.events import Step, parse  # noqa: E402
from trainer.run_folder import RunFolder  # noqa: E402

COSINE = {"stages.1.lr_schedule": "cosine"}
VARIANTS = {
    "control": {},
    "cosine-64px": COSINE,
    "cosine, no pooled loss": {**COSINE, "pooled_loss_weight": 0.0},
    "cosine, lr x1.5": {**COSINE, "stages.0.lr": 1.5e-3, "stages.1.lr": 1.2e-3},
    "cosine, 750 + 5250 steps": {**COSINE, "stages.0.steps": 750, "stages.1.steps": 5250},
    "cosine, no EMA": {**COSINE, "ema_decay": 0.0},
}
THRESHOLDS = ("off", "0.03", "0.05", "0.1", "0.3")


def variant_config(overrides: dict, base: Path, scenes: Path, small: bool) -> dict:
    config = tomllib.loads(TRAIN_CONFIG.read_text())
    config.update(base_model=str(base), precision="fp32")
    config["datasets"][0]["path"] = str(scenes)
    for key, value in overrides.items():
        *parents, last = key.split(".")
        target = config
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        target[last] = value
    if small:
        for stage in config["stages"]:
            stage.update(steps=4, batch_size=8, micro_batch_size=8, warmup_steps=1, sample_every=4,
                         checkpoint_every=4)
    return config


def evaluate_model(folder: Path, count: int, cache: str) -> dict:
    from core.scenes.alignment import evaluate

    engine = load_engine(folder, device="auto", dtype="fp32")  # the GPU, in the CPU build's precision
    started = time.perf_counter()
    report = evaluate(engine, count, EVAL_SEED, cache=cache).to_dict()
    report["eval_seconds"] = time.perf_counter() - started
    return report


def train_and_evaluate(name: str, work: Path, base: Path, count: int, small: bool) -> dict:
    folder = work / name.replace(" ", "_").replace(",", "").replace("+", "and")
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "train.toml"
    config.write_text(tomli_w.dumps(variant_config(VARIANTS[name], base, work / "scenes", small)))
    started = time.perf_counter()
    with open(folder / "train.out", "w") as log:
        subprocess.run([sys.executable, "-m", "trainer", str(config), "--run-dir", str(folder / "run")],
                       check=True, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    train_seconds = time.perf_counter() - started
    losses = [e.loss for e in map(parse, RunFolder(folder / "run").read_events()) if isinstance(e, Step)]
    report = evaluate_model(latest_model(folder / "run"), count, "off")
    return {"name": name, "overrides": VARIANTS[name], "train_seconds": train_seconds,
            "final_loss_mean_of_last_10_logs": sum(losses[-10:]) / max(1, len(losses[-10:])), "alignment": report}


def worker(args) -> None:
    """One job in its own process: a variant (train + evaluate) or a cache threshold on the shipped model."""
    if args.job.startswith("variant:"):
        result = train_and_evaluate(args.job.removeprefix("variant:"), args.work, args.base, args.count, args.small)
    else:
        threshold = args.job.removeprefix("cache:")
        result = {"name": args.job, "alignment": evaluate_model(args.shipped, args.count, threshold)}
    Path(args.result).write_text(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", type=Path, required=True, help="the CPU build's base model folder")
    parser.add_argument("--shipped", type=Path, default=ROOT / "resources" / "demo-model")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "gpu-sweep")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--deadline", type=float, default=420, help="seconds before unfinished jobs are stopped")
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--only", help="comma-separated variant names and cache:THRESHOLD jobs to run")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.base, args.work, args.shipped = args.base.resolve(), args.work.resolve(), args.shipped.resolve()
    if args.job:
        return worker(args)

    import torch

    from core.scenes.world import write_dataset

    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    if not (args.work / "scenes").exists():
        write_dataset(args.work / "scenes", 48 if args.small else 6000, SEED)
    jobs = [f"variant:{name}" for name in VARIANTS] + [f"cache:{t}" for t in THRESHOLDS]
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {job.removeprefix("variant:") for job in jobs} - set(jobs)
        if unknown:
            parser.error(f"unknown jobs {sorted(unknown)}; known: {list(VARIANTS)} and cache:{'/'.join(THRESHOLDS)}")
        jobs = [job for job in jobs if job in wanted or job.removeprefix("variant:") in wanted]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    running = {}
    for index, job in enumerate(jobs):
        result = args.work / f"result-{index}.json"
        result.unlink(missing_ok=True)
        command = [sys.executable, __file__, "--base", str(args.base), "--shipped", str(args.shipped), "--work",
                   str(args.work), "--count", str(args.count), "--job", job, "--result", str(result)]
        with open(args.work / f"job-{index}.log", "w") as log:
            running[job] = (subprocess.Popen(command + (["--small"] if args.small else []), env=env, stdout=log,
                                             stderr=subprocess.STDOUT), result)
    results, failed = [], {}
    for job, (process, result) in running.items():
        try:
            process.wait(timeout=max(1, args.deadline - (time.perf_counter() - started)))
        except subprocess.TimeoutExpired:
            process.kill()
        if result.exists():
            results.append(json.loads(result.read_text()))
        else:
            failed[job] = f"exit {process.poll()}"
    summary = {"date": time.strftime("%Y-%m-%d"),
               "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               "versions": {"torch": torch.__version__}, "count": args.count, "eval_seed": EVAL_SEED,
               "seconds": time.perf_counter() - started, "results": results, "failed": failed}
    out = Path(os.environ.get("OUT", ROOT / "bench" / "out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_demo_sweep.json").write_text(json.dumps(summary, indent=2))
    print(f"{'job':<32}{'colour+kind':>12}{'place':>7}{'pairs':>7}{'passes':>8}{'loss':>8}{'train s':>9}")
    for r in results:
        a = r["alignment"]
        print(f"{r['name']:<32}{a['single']['colour_and_shape']:>12.1%}{a['single']['position']:>7.0%}"
              f"{a['pair'].get('all', float('nan')):>7.1%}{a['transformer_evaluations']:>8.1f}"
              f"{r.get('final_loss_mean_of_last_10_logs', float('nan')):>8.3f}{r.get('train_seconds', 0):>9.0f}")
    for job, why in failed.items():
        print(f"{job}: failed ({why}); see {args.work}/job-*.log")


if __name__ == "__main__":
    main()
