"""The built-in demo captioner: its builder run whole in miniature, and the shipped model loaded through the
same adapter as a person's LLaVA folder, captioning scenes from the generator and matching transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from core.captioning.adapters import DEMO_CAPTIONER, load_captioner
from core.captioning.styles import STYLES, prompts_for
from core.scenes.captions import describe, judge
from core.scenes.world import draw, scenes

ROOT = Path(__file__).resolve().parents[1]


def test_the_builder_runs_end_to_end(tmp_path):
    out = tmp_path / "captioner"
    env = {**os.environ, "LUMINA_STUDIO_HOME": str(tmp_path / "home")}
    result = subprocess.run([sys.executable, "-m", "trainer.demo_captioner", "--out", str(out), "--steps", "20",
                             "--eval-count", "8", "--bench-images", "4"], capture_output=True, text=True, env=env,
                            cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    built = json.loads((out / "build.json").read_text())
    assert built["steps"] == 20 and built["alignment"]["single_count"] + built["alignment"]["pair_count"] == 8
    assert set(built["throughput"]) == {"1", "8", "32", "64", "128"}
    assert "Measured" in (out / "README.md").read_text()
    assert load_captioner(out, device="cpu").model_type == "llava"


def test_the_shipped_captioner_is_small_and_describes_scenes():
    size = sum(p.stat().st_size for p in DEMO_CAPTIONER.rglob("*") if p.is_file())
    assert size < 10 * 2**20
    captioner = load_captioner(None, device="cpu")  # no model: the demo
    held_out = scenes(40, 1000)
    prompt = prompts_for(["detailed"])[0]
    said = captioner.caption([draw(s) for s in held_out], [prompt.question] * 40, prompt.system)
    right = [judge(s, text)["all"] for s, text in zip(held_out, said)]
    assert sum(right) >= 28, list(zip([describe(s, "detailed") for s in held_out], said))


def test_each_style_gets_its_own_wording():
    captioner = load_captioner(DEMO_CAPTIONER, device="cpu")
    scene = scenes(1, 7, pair_share=0.0)[0]
    said = {name: captioner.caption([draw(scene)], [style.question], style.system)[0] for name, style in STYLES.items()}
    assert said["tags"].count(",") >= 2 and "," not in said["short"]
    assert len(said["detailed"]) > len(said["medium"]) > len(said["short"])


def test_the_shipped_captioner_matches_transformers():
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    prompt = prompts_for(["detailed"])[0]
    images = [draw(s) for s in scenes(4, 77)] + [Image.new("RGB", (300, 200), (30, 30, 200))]
    captioner = load_captioner(DEMO_CAPTIONER, device="cpu")
    said = captioner.caption(images, [prompt.question] * len(images), prompt.system)
    processor = AutoProcessor.from_pretrained(DEMO_CAPTIONER, local_files_only=True)
    processor.tokenizer.padding_side = "left"
    messages = [{"role": "system", "content": prompt.system},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt.question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text] * len(images), images=images, padding=True, return_tensors="pt")
    model = LlavaForConditionalGeneration.from_pretrained(DEMO_CAPTIONER, local_files_only=True).eval()
    output = model.generate(**inputs, do_sample=False, max_new_tokens=48)
    expected = processor.tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert said == [t.strip() for t in expected] and all(said)


def test_cli_captions_a_scene_folder_with_the_demo_by_default(tmp_path):
    from core.scenes.world import write_dataset

    folder = tmp_path / "scenes"
    write_dataset(folder, 6, seed=3)
    for txt in folder.glob("*.txt"):
        txt.unlink()
    env = {**os.environ, "LUMINA_STUDIO_HOME": str(tmp_path / "home")}
    result = subprocess.run([sys.executable, "-m", "core.cli", "caption", str(folder), "--style", "detailed,tags"],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "6 captioned" in result.stderr
    lines = (folder / "scene-00000.txt").read_text().splitlines()
    assert len(lines) == 2 and "," in lines[1]
