"""CPU: does training in less memory train as well? The demo model fine-tuned on a folder of scenes with the
demo preset (`demo-scenes-64`: two stages, 200 steps) in each memory setting, against today's fp32 weights with
AdamW, through the real `lumina-studio train`; then its prompt alignment measured with `lumina-studio evaluate`
on held-out prompts. Every setting sees the same data, timesteps and noise in the same order (the trainer seeds
them by step), so the loss curves are paired: a difference is the setting's. Run at the preset's rate and at
10x it (where the model moves far and a lossy setting would show).

    python bench/bench_quality.py [--scenes 256] [--prompts 600]
        (writes bench/out/bench_quality.json and bench/out/bench_quality.png)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import tomli_w
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results import OUT, save_results  # noqa: E402

CLI = [sys.executable, "-m", "lumina_studio"]
PRESET = ROOT / "resources" / "presets" / "train" / "demo-scenes-64.toml"
SETTINGS = {  # label: ([memory], [optimizer]); the EMA is kept in every one, as the preset does
    "today: fp32 weights, AdamW": ({}, {}),
    "bf16 weights, AdamW": ({"weights": "bf16"}, {}),
    "bf16 weights, 8-bit AdamW, EMA on the CPU": ({"weights": "bf16", "ema_on_cpu": True}, {"name": "adamw8bit"}),
    "bf16 weights, Adafactor, EMA on the CPU": ({"weights": "bf16", "ema_on_cpu": True}, {"name": "adafactor"}),
    "bf16 weights, Adafactor, fused backward, EMA on the CPU": (
        {"weights": "bf16", "ema_on_cpu": True, "fused_backward": True}, {"name": "adafactor"}),
}
COLOURS = ["#222222", "#1f77b4", "#2ca02c", "#ff7f0e", "#d62728"]
SMOOTH_LAST = 50  # the final loss: the mean of the last 50 steps' losses (the same batches in every setting)


def run(command: list[str], log: Path) -> None:
    with log.open("w") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}); see {log}")


def train(work: Path, scenes: Path, name: str, lr_factor: float, memory: dict, optimizer: dict) -> Path:
    config = tomllib.loads(PRESET.read_text())
    config.update(name=name, output=str(work / "runs"), log_every=1)
    config["datasets"][0]["path"] = str(scenes)
    for stage in config["stages"]:
        stage["lr"] *= lr_factor
    config["memory"] = memory
    config["optimizer"] = {**config.get("optimizer", {}), **optimizer}
    path = work / f"{name}.toml"
    path.write_text(tomli_w.dumps(config))
    run(CLI + ["train", str(path)], work / f"{name}.log")
    return next((work / "runs").glob(f"{name}-*"))


def losses(run_dir: Path) -> list[float]:
    from trainer.events import Step, parse
    from trainer.run_folder import RunFolder

    return [e.loss for e in map(parse, RunFolder(run_dir).read_events()) if isinstance(e, Step)]


def alignment(model: Path, prompts: int, work: Path) -> dict:
    log = work / f"evaluate-{model.parent.parent.parent.name or model.name}.json"
    with log.open("w") as out:
        subprocess.run(CLI + ["evaluate", "--model", str(model), "--count", str(prompts), "--json"], stdout=out,
                       stderr=subprocess.DEVNULL, check=True, cwd=ROOT)
    report = json.loads(log.read_text())
    return {"single": report["single"]["all"], "pair": report["pair"]["all"]}


def plot(results: dict, path: Path) -> None:
    """Per rate: the loss curves (10-step means) above, each setting's difference from today's (20-step means)
    below, where a drift would show through the batch-to-batch noise they share. PIL: no plotting library."""
    width, height, margin = 560, 300, 50
    image = Image.new("RGB", (width * len(results), 2 * height + 30 * len(SETTINGS)), "white")
    draw = ImageDraw.Draw(image)

    def panel(left: int, top: int, title: str, curves: list[list[float]], zero: bool) -> None:
        low, high = min(min(c) for c in curves), max(max(c) for c in curves)
        if zero:
            low, high = min(low, 0.0), max(high, 0.0)
        bottom, right = top + height - margin, left + width - 2 * margin

        def y(v: float) -> float:
            return bottom - (v - low) / (high - low or 1) * (bottom - top - 20)

        draw.rectangle([left, top + 20, right, bottom], outline="black")
        draw.text((left, top + 4), title, fill="black")
        draw.text((left - 48, top + 20), f"{high:+.4f}" if zero else f"{high:.3f}", fill="black")
        draw.text((left - 48, bottom - 10), f"{low:+.4f}" if zero else f"{low:.3f}", fill="black")
        if zero:
            draw.line([(left, y(0.0)), (right, y(0.0))], fill="#aaaaaa")
        for colour, curve in zip(COLOURS, curves):
            draw.line([(left + i * (right - left) / (len(curve) - 1), y(v)) for i, v in enumerate(curve)],
                      fill=colour, width=2)
        draw.text((left, bottom + 5), f"step 1 .. {len(curves[0])}", fill="black")

    def mean_over(values: list[float], n: int) -> list[float]:
        return [statistics.fmean(values[max(0, i - n + 1):i + 1]) for i in range(len(values))]

    for p, (rate, rows) in enumerate(results.items()):
        curves = [row["losses"] for row in rows.values()]
        panel(p * width + margin, 0, f"{rate}: training loss (10-step mean)", [mean_over(c, 10) for c in curves],
              False)
        panel(p * width + margin, height, f"{rate}: loss minus today's (20-step mean)",
              [mean_over([a - b for a, b in zip(c, curves[0])], 20) for c in curves], True)
    for i, (colour, label) in enumerate(zip(COLOURS, SETTINGS)):
        y = 2 * height + 30 * i
        draw.line([(margin, y + 8), (margin + 30, y + 8)], fill=colour, width=3)
        draw.text((margin + 40, y), label, fill="black")
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=256)
    parser.add_argument("--prompts", type=int, default=600, help="held-out prompts for the alignment")
    parser.add_argument("--rates", type=float, nargs="+", default=[1.0, 10.0], help="times the preset's rate")
    args = parser.parse_args()
    import torch

    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        scenes = work / "scenes"
        run(CLI + ["scenes", str(scenes), "--count", str(args.scenes), "--seed", "50000"], work / "scenes.log")
        base = alignment(Path("demo"), args.prompts, work)
        print(f"the demo model before fine-tuning: single {base['single']:.1%}  pairs {base['pair']:.1%}", flush=True)
        for factor in args.rates:
            rate = f"lr x{factor:g}"
            results[rate] = {}
            for n, (label, (memory, optimizer)) in enumerate(SETTINGS.items()):
                started = time.perf_counter()
                run_dir = train(work, scenes, f"r{factor:g}-s{n}", factor, memory, optimizer)
                seconds = time.perf_counter() - started
                curve = losses(run_dir)
                final = sorted((run_dir / "checkpoints").glob("step-*"))[-1] / "model"
                results[rate][label] = {"losses": curve, "final_loss": statistics.fmean(curve[-SMOOTH_LAST:]),
                                        "alignment": alignment(final, args.prompts, work), "train_s": seconds}
                row = results[rate][label]
                print(f"{rate:8} {label:58} loss {row['final_loss']:.4f}  single {row['alignment']['single']:.1%}"
                      f"  pairs {row['alignment']['pair']:.1%}  {seconds:.0f} s", flush=True)
    plot(results, OUT / "bench_quality.png")
    machine = (f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
               f"Python {platform.python_version()}")
    save_results("bench_quality", {"machine": machine, "scenes": args.scenes, "prompts": args.prompts,
                                   "base_alignment": base, "results": results})
    for rate, rows in results.items():
        reference = rows["today: fp32 weights, AdamW"]
        print(f"\n{rate} (against today's: final loss {reference['final_loss']:.4f})")
        for label, row in rows.items():
            print(f"  {label:58} {row['final_loss'] / reference['final_loss'] - 1:+6.1%} loss, "
                  f"{100 * (row['alignment']['single'] - reference['alignment']['single']):+5.1f} / "
                  f"{100 * (row['alignment']['pair'] - reference['alignment']['pair']):+5.1f} points")


if __name__ == "__main__":
    main()
