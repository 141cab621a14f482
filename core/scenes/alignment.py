"""Prompt alignment: generate images for prompts from the scene world and check them against the pixels.

Single shapes: is the colour right, the kind right, both, the place right? Pairs: are both shapes there
(colour and kind) and does the relation between them hold? Chance levels: colour 1/8, kind 1/3,
place 1/5.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .detect import detect, nearest_place, relation_holds
from .world import IMAGE_SIZE, Scene, draw, scenes

SINGLE_MEASURES = ("colour", "shape", "colour_and_shape", "position", "all")
PAIR_MEASURES = ("objects", "relation", "all")


def score(scene: Scene, image) -> dict[str, bool]:
    found = detect(image)
    if len(scene.shapes) == 1:
        want, top = scene.shapes[0], (found[0] if found else None)
        colour = top is not None and top.colour == want.colour
        shape = top is not None and top.shape == want.shape
        place = top is not None and nearest_place(top.centre) == scene.place
        return {"colour": colour, "shape": shape, "colour_and_shape": colour and shape, "position": place,
                "all": colour and shape and place}
    first, second = ([f for f in found if f.colour == s.colour and f.shape == s.shape] for s in scene.shapes)
    objects = bool(first) and bool(second)
    relation = objects and relation_holds(scene.relation, first[0].centre, second[0].centre)
    return {"objects": objects, "relation": relation, "all": relation}


@dataclass
class AlignmentReport:
    single: dict[str, float] = field(default_factory=dict)  # measure -> share of images right
    pair: dict[str, float] = field(default_factory=dict)
    single_count: int = 0
    pair_count: int = 0
    transformer_evaluations: float = 0.0  # mean per image (0 when scoring given images)
    seconds_per_image: float = 0.0

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def describe(self) -> str:
        single = ", ".join(f"{k} {v:.0%}" for k, v in self.single.items())
        pair = ", ".join(f"{k} {v:.0%}" for k, v in self.pair.items())
        return (f"single shapes ({self.single_count}): {single}\n"
                f"pairs with a relation ({self.pair_count}): {pair}")


def summarise(scored: list[tuple[Scene, dict[str, bool]]]) -> AlignmentReport:
    report = AlignmentReport()
    singles = [s for scene, s in scored if len(scene.shapes) == 1]
    pairs = [s for scene, s in scored if len(scene.shapes) == 2]
    report.single_count, report.pair_count = len(singles), len(pairs)
    if singles:
        report.single = {m: statistics.fmean(s[m] for s in singles) for m in SINGLE_MEASURES}
    if pairs:
        report.pair = {m: statistics.fmean(s[m] for s in pairs) for m in PAIR_MEASURES}
    return report


def score_ground_truth(count: int, seed: int) -> AlignmentReport:
    """The detector on the world's own drawings (should be 100%)."""
    return summarise([(scene, score(scene, draw(scene))) for scene in scenes(count, seed)])


def evaluate(engine, count: int = 100, seed: int = 1000, out_dir: Path | None = None, on_progress=None,
             **settings) -> AlignmentReport:
    """Generate one image per prompt from the world's grammar with `engine` and score them.

    settings go into each GenerationRequest (e.g. steps, guidance, cache); the size is 64x64.
    `on_progress(done, total)` is called after each image.
    """
    from ..generation.request import GenerationRequest

    scored, evaluations, seconds = [], [], []
    for index, scene in enumerate(scenes(count, seed)):
        request = GenerationRequest(scene.caption, width=IMAGE_SIZE, height=IMAGE_SIZE, seed=seed + index,
                                    **settings)
        result = engine.generate(request)[0]
        scored.append((scene, score(scene, result.pixels)))
        evaluations.append(result.joint_evaluations)
        seconds.append(result.timings["sample_s"] + result.timings["decode_s"])
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray((result.pixels * 255).round().astype("uint8")).save(out_dir / f"{index:04d}.png")
        if on_progress is not None:
            on_progress(index + 1, count)
    report = summarise(scored)
    report.transformer_evaluations = statistics.fmean(evaluations)
    report.seconds_per_image = statistics.fmean(seconds)
    return report
