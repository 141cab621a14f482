"""What a captioner should say about a scene, in each caption style, and a judge of what one did say.

The demo captioner learns these wordings; the judge reads any caption (the demo's or another model's) for the
colours, shapes, place and relation it names and checks them against the scene the generator drew.
"""

from __future__ import annotations

import re

from .world import COLOURS, SHAPES, Scene, Shape

RELATION_PHRASES = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}


def _words(shape: Shape, with_size: bool) -> str:
    return f"{shape.size} {shape.colour} {shape.shape}" if with_size else f"{shape.colour} {shape.shape}"


def _a(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _where(place: str) -> str:
    if place == "centre":
        return "in the centre"
    return f"on the {place}" if place in ("left", "right") else f"at the {place}"


def describe(scene: Scene, style: str) -> str:
    """The caption of `scene` in `style` (detailed, medium, short, tags), one line."""
    if len(scene.shapes) == 1:
        shape = scene.shapes[0]
        if style == "detailed":
            return f"{_a(_words(shape, True))} {_where(scene.place)} of a {scene.background} background"
        if style == "medium":
            return f"{_a(_words(shape, False))} {_where(scene.place)}"
        if style == "short":
            return _a(_words(shape, False))
        return f"{_words(shape, False)}, {shape.size}, {scene.place}, {scene.background} background"
    first, second = (_words(s, False) for s in scene.shapes)
    relation = RELATION_PHRASES[scene.relation]
    if style == "detailed":
        return f"{_a(first)} {relation} {_a(second)} on a {scene.background} background"
    if style == "medium":
        return f"{_a(first)} {relation} {_a(second)}"
    if style == "short":
        return f"{_a(first)} and {_a(second)}"
    return f"{first}, {second}, {scene.relation}, {scene.background} background"


_OBJECT = re.compile(r"\b(" + "|".join(COLOURS) + r")\s+(" + "|".join(SHAPES) + r")s?\b")
_PLACE = re.compile(r"\b(?:on|at|to) the (left|right|top|bottom)\b|\b(centre|center|middle)\b")
_RELATION = re.compile(r"\b(to the left of|left of|to the right of|right of|above|over|below|under)\b")
_RELATION_NAMES = {"to the left of": "left of", "left of": "left of", "to the right of": "right of",
                   "right of": "right of", "above": "above", "over": "above", "below": "below", "under": "below"}


def judge(scene: Scene, caption: str) -> dict[str, bool]:
    """Single shapes: colour, shape, both, position, all. Pairs: objects (both named), relation, all."""
    text = caption.lower()
    named = [(m.group(1), m.group(2)) for m in _OBJECT.finditer(text)]
    if len(scene.shapes) == 1:
        want = scene.shapes[0]
        colour = any(c == want.colour for c, _ in named)
        shape = any(s == want.shape for _, s in named)
        both = (want.colour, want.shape) in named
        places = {m.group(1) or "centre" for m in _PLACE.finditer(text)}
        position = places == {scene.place}
        return {"colour": colour, "shape": shape, "colour_and_shape": both, "position": position,
                "all": both and position}
    wanted = [(s.colour, s.shape) for s in scene.shapes]
    objects = all(w in named for w in wanted)
    relation = False
    if objects:
        # "A rel B": the relation between the first mention of each object, in the order they are named
        found = _RELATION.search(text)
        order = sorted(wanted, key=named.index)
        if found:
            said = _RELATION_NAMES[found.group(1)]
            relation = said == scene.relation if order == wanted else said == _flip(scene.relation)
    return {"objects": objects, "relation": relation, "all": objects and relation}


def _flip(relation: str) -> str:
    return {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}[relation]
