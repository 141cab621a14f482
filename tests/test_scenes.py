"""The scene world: deterministic drawings whose captions say what is drawn, and the alignment scorer."""

import re
import subprocess
import sys

import numpy as np
import pytest

from core.scenes.alignment import score, score_ground_truth, summarise
from core.scenes.detect import detect, nearest_place
from core.scenes.world import COLOURS, PLACES, RELATION_WORDS, SHAPES, draw, scenes, write_dataset


def test_scenes_are_a_pure_function_of_the_seed():
    first, again, other = scenes(50, 3), scenes(50, 3), scenes(50, 4)
    assert first == again and first != other
    assert np.array_equal(np.asarray(draw(first[0])), np.asarray(draw(again[0])))


def test_the_world_has_what_the_demo_needs():
    drawn = scenes(600, 0)
    singles = [s for s in drawn if len(s.shapes) == 1]
    pairs = [s for s in drawn if len(s.shapes) == 2]
    assert len(COLOURS) >= 8 and set(SHAPES) == {"circle", "square", "triangle"}
    assert {s.shapes[0].colour for s in singles} == set(COLOURS)
    assert {s.shapes[0].size for s in singles} == {"small", "large"}
    assert {s.place for s in singles} == set(PLACES)
    assert {s.relation for s in pairs} == set(RELATION_WORDS)
    assert len({re.sub(r"(red|orange|yellow|green|cyan|blue|purple|pink|circle|square|triangle)", "X", s.caption)
                for s in drawn}) > 30  # varied wording


def test_captions_name_what_is_drawn():
    for scene in scenes(300, 11):
        caption = scene.caption
        for shape in scene.shapes:
            assert f"{shape.colour} {shape.shape}" in caption
        if scene.place == "centre":
            assert "centre" in caption or "middle" in caption
        elif scene.place:
            assert scene.place in caption
        if scene.relation:
            a, b = (f"{s.colour} {s.shape}" for s in scene.shapes)
            assert any(f"{a} {words} " in caption and caption.index(a) < caption.index(b)
                       for words in RELATION_WORDS[scene.relation])
        found = detect(draw(scene))  # and the picture agrees with the caption
        assert sorted((f.colour, f.shape) for f in found) == sorted((s.colour, s.shape) for s in scene.shapes)
        if scene.place:
            assert nearest_place(found[0].centre) == scene.place


def test_the_scorer_gives_ground_truth_full_marks_and_noise_near_chance():
    truth = score_ground_truth(400, 5)
    assert set(truth.single.values()) == {1.0} and set(truth.pair.values()) == {1.0}
    rng = np.random.default_rng(0)
    noise = summarise([(s, score(s, rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))) for s in scenes(300, 6)])
    assert noise.single["colour"] < 0.3 and noise.single["shape"] < 0.5 and noise.single["position"] < 0.4
    assert noise.single["colour_and_shape"] < 0.15 and noise.pair["all"] < 0.1
    blank = summarise([(s, score(s, np.full((64, 64, 3), 250, np.uint8))) for s in scenes(100, 7)])
    assert blank.single["all"] == 0 and blank.pair["all"] == 0


def test_a_wrong_picture_is_scored_wrong():
    single = next(s for s in scenes(50, 8) if len(s.shapes) == 1 and s.place == "left")
    moved = next(s for s in scenes(400, 9) if len(s.shapes) == 1 and s.place == "right"
                 and s.shapes[0].colour != single.shapes[0].colour and s.shapes[0].shape != single.shapes[0].shape)
    result = score(single, draw(moved))
    assert not result["colour"] and not result["shape"] and not result["position"]
    pair = next(s for s in scenes(50, 10) if s.relation == "left of")
    mirrored = draw(pair).transpose(0)  # PIL FLIP_LEFT_RIGHT: the same shapes, the relation reversed
    assert score(pair, mirrored) == {"objects": True, "relation": False, "all": False}


def test_scenes_command_writes_a_captioned_dataset(tmp_path):
    result = subprocess.run([sys.executable, "-m", "core.cli", "scenes", str(tmp_path / "d"), "--count", "12",
                             "--seed", "2"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    pngs = sorted((tmp_path / "d").glob("*.png"))
    assert len(pngs) == 12 and all(p.with_suffix(".txt").read_text().strip() for p in pngs)
    write_dataset(tmp_path / "again", 12, 2)
    assert (tmp_path / "again" / "scene-00005.txt").read_text() == (tmp_path / "d" / "scene-00005.txt").read_text()


@pytest.mark.parametrize("args", [["--count", "0"], ["--pairs", "2"]])
def test_scenes_command_refuses_bad_numbers(tmp_path, args):
    result = subprocess.run([sys.executable, "-m", "core.cli", "scenes", str(tmp_path), *args],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "--count must be at least 1" in result.stderr


def test_evaluate_generates_and_scores_through_the_engine(engine, tmp_path):
    from core.scenes.alignment import evaluate

    report = evaluate(engine, count=6, seed=3, out_dir=tmp_path, steps=2)
    assert report.single_count + report.pair_count == 6
    assert set(report.single) == {"colour", "shape", "colour_and_shape", "position", "all"}
    assert report.transformer_evaluations > 0 and report.seconds_per_image > 0
    assert len(list(tmp_path.glob("*.png"))) == 6


def test_evaluate_on_the_command_line_shows_progress(tmp_path):
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "LUMINA_STUDIO_HOME": str(tmp_path)}
    command = [sys.executable, "-m", "core.cli", "evaluate", "--count", "3", "--steps", "2", "--device", "cpu"]
    shown = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert shown.returncode == 0 and "scoring prompts" in shown.stderr and "3/3" in shown.stderr
    for_the_app = subprocess.run(command + ["--json"], capture_output=True, text=True, env=env, timeout=300)
    steps = [json.loads(line) for line in for_the_app.stderr.splitlines() if line.startswith("{")]
    assert steps[-1] == {"done": 3, "total": 3} and "single" in json.loads(for_the_app.stdout)
