"""Area-based aspect buckets: every image trains at a size of about resolution^2 pixels with its own shape.

Sizes sit on a grid (16 px at 256, growing with the resolution: 64 px at 1024), area <= resolution^2,
aspect at most 4:1, as in the authors' recipe. An image goes to the bucket whose aspect ratio is
nearest in log scale, is resized to cover it and centre-cropped.
"""

from __future__ import annotations

import math

from PIL import Image

MAX_ASPECT = 4.0


def bucket_step(resolution: int) -> int:
    return max(16, resolution // 16 // 16 * 16)


def bucket_sizes(resolution: int) -> list[tuple[int, int]]:
    """(width, height) pairs for a stage resolution, sorted by aspect ratio (tall to wide)."""
    step = bucket_step(resolution)
    area = resolution * resolution
    sizes = set()
    for width in range(resolution, 2 * resolution + 1, step):  # landscape and square, then mirrored
        height = area // width // step * step
        if height >= step and width / height <= MAX_ASPECT:
            sizes.update({(width, height), (height, width)})
    return sorted(sizes, key=lambda wh: wh[0] / wh[1])


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    aspect = math.log(width / height)
    return min(buckets, key=lambda wh: abs(math.log(wh[0] / wh[1]) - aspect))


def fit_to_bucket(image: Image.Image, bucket: tuple[int, int]) -> Image.Image:
    """Resize to cover the bucket (keeping the aspect ratio), then crop the centre."""
    target_w, target_h = bucket
    scale = max(target_w / image.width, target_h / image.height)
    width, height = max(target_w, round(image.width * scale)), max(target_h, round(image.height * scale))
    resized = image.resize((width, height), Image.Resampling.LANCZOS)
    left, top = (width - target_w) // 2, (height - target_h) // 2
    return resized.crop((left, top, left + target_w, top + target_h))
