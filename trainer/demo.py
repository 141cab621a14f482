"""Build the built-in demo model from nothing, on a CPU:

    python -m trainer.demo [--work build/demo] [--out resources/demo-model]

1. draw the scene dataset (PNG + .txt captions),
2. build the base model: a BPE Gemma tokenizer trained on the world's captions and the system prompts,
   a small Gemma-2 text encoder (random and frozen, as the authors keep theirs frozen), a small random
   Lumina2Transformer2DModel, the scheduler config, and a small VAE trained here on the scenes,
3. train the DiT with `lumina-studio train` on resources/demo/train.toml (32 px, then 64 px),
4. copy the final checkpoint's model folder to --out and measure its prompt alignment.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import tomli_w

from core.models.scaffold import ScaffoldSpec, build_pipeline
from core.prompts import SYSTEM_PROMPTS, full_prompt
from core.scenes.world import draw, scenes, vocabulary_corpus, write_dataset

from .vae import fit_latent_scale, images_to_tensor, reconstruction_error, train_vae

ROOT = Path(__file__).resolve().parents[1]
TRAIN_CONFIG = ROOT / "resources" / "demo" / "train.toml"
DEMO_SPEC = ScaffoldSpec(
    hidden_size=128, num_layers=4, num_refiner_layers=1, num_attention_heads=4, num_kv_heads=2, multiple_of=32,
    text_width=64, text_layers=2, vocab_size=600, vae_channels=(8, 16, 16, 16), latent_channels=16,
)
SCENES = 6000
VAE_STEPS = 3000
SEED = 0


def build_base(folder: Path, data_seed: int) -> dict:
    """The base model folder, with its VAE trained on the scenes; returns what was measured."""
    # Every training caption starts with the "real" system prompt: seen often, BPE learns it as a few long
    # tokens, which keeps sequences short (about 10-20 tokens with the caption).
    began = time.perf_counter()
    corpus = vocabulary_corpus() + [full_prompt("", SYSTEM_PROMPTS["real"])] * 1000 + list(SYSTEM_PROMPTS.values())
    pipeline = build_pipeline(DEMO_SPEC, corpus=corpus, seed=SEED)
    images = images_to_tensor([draw(scene) for scene in scenes(2048, data_seed + 1)])
    started = time.perf_counter()
    losses = train_vae(pipeline.vae, images, VAE_STEPS, batch=16, lr=2e-3, seed=SEED)
    shift, scale = fit_latent_scale(pipeline.vae, images[:1024])
    measured = {"vae_seconds": time.perf_counter() - started, "vae_final_loss": sum(losses[-20:]) / 20,
                "vae_error_levels": reconstruction_error(pipeline.vae, images[1024:1280]),
                "latent_shift": shift, "latent_scale": scale}
    pipeline.save_pretrained(str(folder), safe_serialization=True)
    measured["base_seconds"] = time.perf_counter() - began
    return measured


def train_config(work: Path) -> Path:
    config = tomllib.loads(TRAIN_CONFIG.read_text())
    config["base_model"] = str(work / "base")
    config["datasets"][0]["path"] = str(work / "scenes")
    path = work / "train.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def copy_model(checkpoint_model: Path, out: Path) -> None:
    """A plain copy (the checkpoint hard-links the base model's files)."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(checkpoint_model, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=str(ROOT / "build" / "demo"))
    parser.add_argument("--out", default=str(ROOT / "resources" / "demo-model"))
    parser.add_argument("--scenes", type=int, default=SCENES)
    parser.add_argument("--reuse-base", action="store_true",
                        help="keep the scenes and the base model (with its trained VAE) from an earlier build")
    args = parser.parse_args(argv)
    work, out = Path(args.work).resolve(), Path(args.out).resolve()
    started = time.perf_counter()
    if args.reuse_base:
        measured = json.loads((work / "base.json").read_text())
    else:
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        write_dataset(work / "scenes", args.scenes, SEED)
        measured = build_base(work / "base", SEED)
        (work / "base.json").write_text(json.dumps(measured, indent=2))
    print(json.dumps(measured, indent=2), file=sys.stderr)
    run_dir = work / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    subprocess.run([sys.executable, "-m", "trainer", str(train_config(work)), "--run-dir", str(run_dir)], check=True)
    checkpoint = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    copy_model(checkpoint / "model", out)
    # With --reuse-base the earlier build's base time counts too: the total is what a full build takes.
    reused = measured.get("base_seconds", measured["vae_seconds"]) if args.reuse_base else 0.0
    measured["total_seconds"] = time.perf_counter() - started + reused
    measured["alignment"] = measure_alignment(out)
    (work / "build.json").write_text(json.dumps(measured, indent=2))
    write_model_card(out, measured, args.scenes)
    print(f"demo model written to {out} in {measured['total_seconds'] / 60:.1f} min", file=sys.stderr)
    return 0


EVAL_COUNT, EVAL_SEED = 200, 1000


def measure_alignment(folder: Path) -> dict:
    """The evaluator at the default settings, and with the cache at 0.3 (the app's middle preset)."""
    from core.engine import Engine
    from core.models.sources import resolve_source
    from core.scenes.alignment import evaluate

    engine = Engine(resolve_source(folder, name="demo"), device="cpu")
    engine.load()
    return {label: evaluate(engine, EVAL_COUNT, EVAL_SEED, cache=cache).to_dict()
            for label, cache in (("default", "off"), ("cache_0.3", "0.3"))}


def write_model_card(folder: Path, measured: dict, scene_count: int) -> None:
    config = tomllib.loads(TRAIN_CONFIG.read_text())
    stages = ", ".join(f"{s['name']} ({s['resolution']} px, {s['steps']} steps, batch {s['batch_size']}, lr {s['lr']})"
                       for s in config["stages"])
    rows = []
    for label, report in measured["alignment"].items():
        single, pair = report["single"], report["pair"]
        rows.append(f"| {label} | {single['colour_and_shape']:.0%} | {single['position']:.0%} | {pair['objects']:.0%} | "
                    f"{pair['all']:.0%} | {report['transformer_evaluations']:.1f} | {report['seconds_per_image']:.2f} s |")
    card = f"""# Lumina Studio demo model

A small Lumina-Image 2.0 model (same architecture and file layout: `Lumina2Transformer2DModel`, Gemma-2
text encoder, 8x AutoencoderKL, flow-matching scheduler) trained by Lumina Studio's own trainer on its
scene world: one or two flat shapes (circle, square, triangle; eight colours; two sizes) on plain
backgrounds, at a place or in a relation. It exists so that the app works on a fresh machine in seconds.

## How it was made

`python -m trainer.demo` (about {measured['total_seconds'] / 60:.0f} minutes on the 2-core machine that built it):
{scene_count} scenes drawn with `lumina-studio scenes`; a BPE Gemma tokenizer trained on the world's captions
and the system prompts; a random Gemma-2 text encoder ({DEMO_SPEC.text_layers} layers, width
{DEMO_SPEC.text_width}) kept frozen, as the authors keep theirs; a VAE trained on the scenes ({VAE_STEPS}
steps, reconstruction error {measured['vae_error_levels']:.1f} of 255 levels); then the DiT (hidden
{DEMO_SPEC.hidden_size}, {DEMO_SPEC.num_layers} joint blocks) with `lumina-studio train
resources/demo/train.toml`: {stages}; EMA {config['ema_decay']}.

## Prompt alignment (`lumina-studio evaluate`, {EVAL_COUNT} prompts from the world's grammar, seed {EVAL_SEED})

| settings | single: colour and shape | single: place | pairs: both shapes | pairs: shapes and relation | joint-block passes per image | time per image |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Default settings: 64x64, 18 midpoint steps, guidance 4, CFG truncation 0.25, renorm 1.0.

## Limits

It knows only its world: eight colours, three shapes, five places, four relations, 64x64 pixels.
Anything else gives a shape-like blob. It is a demonstration, not an image model.
"""
    (folder / "README.md").write_text(card)


if __name__ == "__main__":
    sys.exit(main())
