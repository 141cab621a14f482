"""A small world of flat shapes that Lumina Studio can draw itself: the demo model's training data.

A scene is one or two shapes (circle, square, triangle) in one of eight colours and two sizes, on a
plain neutral background, at a named place (left, right, top, bottom, centre) or in a relation to the
other shape (left of, right of, above, below). Each scene has a caption worded in one of several ways.
Everything is a pure function of the seed.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass

from PIL import Image, ImageDraw

IMAGE_SIZE = 64
COLOURS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "cyan": (40, 200, 220),
    "blue": (40, 70, 220),
    "purple": (140, 50, 190),
    "pink": (245, 130, 190),
}
BACKGROUNDS = {"white": (250, 250, 250), "light gray": (200, 200, 200), "dark gray": (70, 70, 70),
               "black": (15, 15, 15)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 20, "large": 30}  # side / diameter in pixels at 64x64 (20: a VAE keeps a triangle's corners)
PLACES = {"left": (16, 32), "right": (48, 32), "top": (32, 16), "bottom": (32, 48), "centre": (32, 32)}
RELATIONS = ("left of", "right of", "above", "below")


@dataclass(frozen=True)
class Shape:
    colour: str
    shape: str
    size: str
    centre: tuple[int, int]


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    background: str
    place: str | None  # single shapes: where it is
    relation: str | None  # pairs: how the first shape sits relative to the second
    caption: str


# ---- drawing ------------------------------------------------------------------------------------------


def draw(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    scale = size / IMAGE_SIZE
    image = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    pen = ImageDraw.Draw(image)
    for shape in scene.shapes:
        half = SIZES[shape.size] * scale / 2
        cx, cy = shape.centre[0] * scale, shape.centre[1] * scale
        box = (cx - half, cy - half, cx + half - 1, cy + half - 1)
        fill = COLOURS[shape.colour]
        if shape.shape == "circle":
            pen.ellipse(box, fill=fill)
        elif shape.shape == "square":
            pen.rectangle(box, fill=fill)
        else:  # an upright triangle filling its box
            pen.polygon([(cx, box[1]), (box[2], box[3]), (box[0], box[3])], fill=fill)
    return image


# ---- sampling scenes -----------------------------------------------------------------------------------


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _describe(shape: Shape, rng: random.Random, with_size: bool) -> str:
    words = f"{shape.size} {shape.colour} {shape.shape}" if with_size else f"{shape.colour} {shape.shape}"
    return f"{_article(words)} {words}"


SINGLE_TEMPLATES = (
    "{obj} on the {place}, {bg} background",
    "{obj} at the {place} of the image",
    "{obj} on the {place} of a {bg} background",
    "{bg} background with {obj} on the {place}",
    "a picture of {obj}, placed on the {place}",
)
CENTRE_TEMPLATES = (
    "{obj} in the centre, {bg} background",
    "{obj} in the middle of the image",
    "{obj} in the centre of a {bg} background",
    "{bg} background with {obj} in the middle",
    "a picture of {obj}, placed in the centre",
)
PAIR_TEMPLATES = (
    "{a} {rel} {b}, {bg} background",
    "{a} {rel} {b}",
    "{bg} background with {a} {rel} {b}",
    "a picture of {a} {rel} {b}",
)
RELATION_WORDS = {"left of": ("to the left of", "left of"), "right of": ("to the right of", "right of"),
                  "above": ("above", "over"), "below": ("below", "under")}


def _jitter(point: tuple[int, int], rng: random.Random, amount: int = 3) -> tuple[int, int]:
    return point[0] + rng.randint(-amount, amount), point[1] + rng.randint(-amount, amount)


def single_scene(rng: random.Random, colour=None, shape=None, size=None, place=None, background=None) -> Scene:
    thing = Shape(colour or rng.choice(list(COLOURS)), shape or rng.choice(SHAPES),
                  size or rng.choice(list(SIZES)), (0, 0))
    place = place or rng.choice(list(PLACES))
    background = background or rng.choice(list(BACKGROUNDS))
    anchor = PLACES[place]
    if thing.size == "large" and place != "centre":  # keep a large shape inside the frame
        anchor = tuple(min(max(v, 20), 44) for v in anchor)
    thing = Shape(thing.colour, thing.shape, thing.size, _jitter(anchor, rng))
    templates = CENTRE_TEMPLATES if place == "centre" else SINGLE_TEMPLATES
    caption = rng.choice(templates).format(obj=_describe(thing, rng, rng.random() < 0.5),
                                           place="centre" if place == "centre" else place, bg=background)
    return Scene((thing,), background, place, None, caption)


def pair_scene(rng: random.Random, relation=None, background=None) -> Scene:
    relation = relation or rng.choice(RELATIONS)
    background = background or rng.choice(list(BACKGROUNDS))
    first_colour, second_colour = rng.sample(list(COLOURS), 2)  # two colours tell the shapes apart
    horizontal = relation in ("left of", "right of")
    first_first = relation in ("left of", "above")  # the first shape has the smaller coordinate
    across = [rng.randint(14, 20), rng.randint(44, 50)]
    along = rng.randint(24, 40)
    coordinates = across if first_first else across[::-1]
    centres = [(c, along) if horizontal else (along, c) for c in coordinates]
    shapes = tuple(Shape(colour, rng.choice(SHAPES), "small", centre)
                   for colour, centre in zip((first_colour, second_colour), centres))
    words = rng.choice(RELATION_WORDS[relation])
    caption = rng.choice(PAIR_TEMPLATES).format(a=_describe(shapes[0], rng, False), rel=words,
                                                b=_describe(shapes[1], rng, False), bg=background)
    return Scene(shapes, background, None, relation, caption)


def _sentence_case(scene: Scene, rng: random.Random) -> Scene:
    """Half the captions start with a capital letter, a third of those end with a full stop, as people type."""
    if rng.random() < 0.5:
        return scene
    caption = scene.caption[0].upper() + scene.caption[1:] + ("." if rng.random() < 1 / 3 else "")
    return Scene(scene.shapes, scene.background, scene.place, scene.relation, caption)


def random_scene(rng: random.Random, pair_share: float = 0.4) -> Scene:
    return _sentence_case(pair_scene(rng) if rng.random() < pair_share else single_scene(rng), rng)


def scenes(count: int, seed: int, pair_share: float = 0.4) -> list[Scene]:
    rng = random.Random(seed)
    return [random_scene(rng, pair_share) for _ in range(count)]


def vocabulary_corpus() -> list[str]:
    """Every word the captions use, in sentences (for training a tokenizer that covers the world)."""
    rng = random.Random(0)
    return [random_scene(rng).caption for _ in range(3000)]


@functools.cache
def known_words() -> frozenset[str]:
    """The words the demo model was trained on (lower case); a prompt's other words mean nothing to it."""
    return frozenset(word for caption in vocabulary_corpus() for word in prompt_words(caption))


def prompt_words(text: str) -> list[str]:
    """The words as written: case matters, since the demo's tokenizer knows "blue" but splits "BLUE" and
    "Blue" into bytes it never saw in training."""
    return re.findall(r"[A-Za-z]+", text)


def vocabulary_warning(text: str) -> str:
    """What to tell a person whose prompt for the demo model has words it was never shown ("" if none)."""
    known = known_words()
    unknown = list(dict.fromkeys(word for word in prompt_words(text) if word not in known))
    if not unknown:
        return ""
    cased = [word for word in unknown if word.lower() in known]
    return ("The demo model knows only its world's words (colours, shapes, places, backgrounds), in lower case; "
            f"it does not know: {', '.join(unknown[:8])}"
            + (f" (write {', '.join(word.lower() for word in cased[:4])} in lower case)" if cased else ""))


def write_dataset(folder, count: int, seed: int, pair_share: float = 0.4, on_progress=None,
                  captions: bool = True) -> int:
    """Draw `count` scenes into `folder` as PNGs with `.txt` captions beside them (`captions=False`: the
    pictures only, for the captioner to caption); returns the count."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for index, scene in enumerate(scenes(count, seed, pair_share)):
        stem = folder / f"scene-{index:05d}"
        draw(scene).save(stem.with_suffix(".png"))
        if captions:
            stem.with_suffix(".txt").write_text(scene.caption + "\n", encoding="utf-8")
        if on_progress is not None:
            on_progress(index + 1)
    return count
