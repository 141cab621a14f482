"""Read a scene back from pixels: each shape's colour, kind and place. Used to score prompt alignment.

The background is the median colour of the border; shapes are the connected regions that differ from
it. Colour: the palette colour nearest the region's median. Kind: the ideal square, circle or triangle
in the region's bounding box that overlaps it best. Place: the nearest named anchor.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from .world import COLOURS, PLACES

FOREGROUND_DISTANCE = 60  # max channel difference from the background
MIN_AREA = 24  # pixels at 64x64; smaller specks are noise
RELATION_MARGIN = 4  # pixels the centres must be apart along the relation's axis


@dataclass(frozen=True)
class Found:
    colour: str
    shape: str
    centre: tuple[float, float]  # (x, y) of the bounding box's centre, in 64x64 pixels
    area: int


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected regions of a boolean mask, as arrays of (row, column) pixels."""
    seen = np.zeros_like(mask, dtype=bool)
    regions = []
    height, width = mask.shape
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        queue, pixels = deque([start]), []
        while queue:
            r, c = queue.popleft()
            pixels.append((r, c))
            for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if 0 <= nr < height and 0 <= nc < width and mask[nr, nc] and not seen[nr, nc]:
                    seen[nr, nc] = True
                    queue.append((nr, nc))
        regions.append(np.array(pixels))
    return regions


def _nearest_colour(rgb: np.ndarray) -> str:
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names], dtype=np.float32)
    return names[int(np.argmin(((palette - rgb) ** 2).sum(axis=1)))]


def _templates(height: int, width: int) -> dict[str, np.ndarray]:
    """The three shapes filling a height x width box, as boolean masks."""
    y, x = np.mgrid[0:height, 0:width]
    v, u = (y + 0.5) / height, (x + 0.5) / width  # pixel centres in [0, 1]
    return {
        "square": np.ones((height, width), dtype=bool),
        "circle": (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25,
        "triangle": np.abs(u - 0.5) <= v / 2,  # apex at the top, base at the bottom
    }


def _shape_of(pixels: np.ndarray) -> str:
    """The shape whose ideal mask in the region's bounding box overlaps the region best (IoU): robust to
    the soft, rounded edges a VAE gives small shapes."""
    top, left = pixels.min(axis=0)
    height, width = pixels.max(axis=0) - (top, left) + 1
    mask = np.zeros((height, width), dtype=bool)
    mask[pixels[:, 0] - top, pixels[:, 1] - left] = True
    overlap = {name: (mask & ideal).sum() / (mask | ideal).sum() for name, ideal in _templates(height, width).items()}
    return max(overlap, key=overlap.get)


def detect(image) -> list[Found]:
    """Shapes in an image (PIL image or (H, W, 3) array), largest first, in 64x64 coordinates."""
    pixels = np.asarray(image.convert("RGB").resize((64, 64)) if hasattr(image, "convert") else image)
    if pixels.dtype != np.uint8:
        pixels = (np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)
    pixels = pixels.astype(np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = np.median(border, axis=0)
    mask = np.abs(pixels - background).max(axis=2) > FOREGROUND_DISTANCE
    found = []
    for region in _components(mask):
        if len(region) < MIN_AREA:
            continue
        colour = _nearest_colour(np.median(pixels[region[:, 0], region[:, 1]], axis=0))
        # The box's centre, not the centroid: a triangle's centroid sits a sixth of its height low.
        centre = ((region[:, 1].min() + region[:, 1].max()) / 2, (region[:, 0].min() + region[:, 0].max()) / 2)
        found.append(Found(colour, _shape_of(region), centre, len(region)))
    return sorted(found, key=lambda f: -f.area)


def nearest_place(centre: tuple[float, float]) -> str:
    return min(PLACES, key=lambda p: (PLACES[p][0] - centre[0]) ** 2 + (PLACES[p][1] - centre[1]) ** 2)


def relation_holds(relation: str, first: tuple[float, float], second: tuple[float, float]) -> bool:
    dx, dy = first[0] - second[0], first[1] - second[1]
    return {"left of": dx < -RELATION_MARGIN, "right of": dx > RELATION_MARGIN,
            "above": dy < -RELATION_MARGIN, "below": dy > RELATION_MARGIN}[relation]
