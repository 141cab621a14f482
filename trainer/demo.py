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
    args = parser.parse_args(argv)
    work, out = Path(args.work).resolve(), Path(args.out).resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    started = time.perf_counter()
    write_dataset(work / "scenes", args.scenes, SEED)
    measured = build_base(work / "base", SEED)
    print(json.dumps(measured, indent=2), file=sys.stderr)
    run_dir = work / "run"
    subprocess.run([sys.executable, "-m", "trainer", str(train_config(work)), "--run-dir", str(run_dir)], check=True)
    checkpoint = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    copy_model(checkpoint / "model", out)
    measured["total_seconds"] = time.perf_counter() - started
    (work / "build.json").write_text(json.dumps(measured, indent=2))
    print(f"demo model written to {out} in {measured['total_seconds'] / 60:.1f} min", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
