"""Opening images people give us: any mode and format Pillow reads, to plain RGB, or a reason why not.

Covers what real folders hold: 16-bit PNGs, CMYK JPEGs, palette images with transparency, animations (the
first frame), EXIF rotation, and decompression bombs (refused past `MAX_PIXELS`, where Pillow only warns).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 178_956_970  # Pillow's own warning level (~13,400 x 13,400); twice it Pillow refuses by itself


class ImageProblem(ValueError):
    """The image cannot be used; the message says why, for a per-image list."""


def problem(exc: BaseException) -> str:
    """A short reason a person understands, for an exception from opening or decoding an image."""
    if isinstance(exc, UnidentifiedImageError):
        return "not an image Pillow can read"
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, Image.DecompressionBombError):
        return f"too large to open safely ({exc})"
    if isinstance(exc, ImageProblem):
        return str(exc)
    text = str(exc)
    if "truncated" in text or "broken data stream" in text or "image file is" in text:
        return f"truncated or damaged ({text})"
    return text or type(exc).__name__


def check_regular_file(path: str | Path) -> None:
    """Raise OSError unless `path` is a regular file: opening a FIFO (or a device) named like an image or a
    caption blocks for ever, so nothing we read is opened before this check."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise OSError(errno.EINVAL, "not a regular file (a pipe, device or socket)", str(path))


def open_image(path: str | Path) -> Image.Image:
    """Pillow's Image.open, for regular files only (see check_regular_file)."""
    check_regular_file(path)
    return Image.open(path)


def open_rgb(path: Path, max_side: int | None = None) -> Image.Image:
    """The image as RGB (first frame, EXIF-rotated, transparency over white); raises ImageProblem.

    `max_side`: a larger image is scaled down as it is read (JPEGs decode at the smaller size; others are
    reduced before any copy is made), so a batch of huge pictures costs one full decode at a time, not all
    of them. The result's info["original_size"] says what it was."""
    try:
        with open_image(path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageProblem(f"too large to open safely ({width}x{height} pixels)")
            image.seek(0)
            if max_side and max(width, height) > max_side:
                image.draft("RGB", (max_side, max_side))  # JPEG: decoded at 1/2, 1/4 or 1/8 scale
            image.load()
            if max_side and max(image.size) > max_side:
                factor = max(image.size) // max_side
                small = image.reduce(factor) if factor > 1 else image
                if max(small.size) > max_side:
                    small = small.resize(_fit(small.size, max_side), Image.Resampling.LANCZOS)
                small.info = {**image.info}
                image = small
            rgb = to_rgb(ImageOps.exif_transpose(image))
            rgb.info["original_size"] = (width, height)
            return rgb
    except ImageProblem:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError) as exc:
        raise ImageProblem(problem(exc)) from None


def _fit(size: tuple[int, int], side: int) -> tuple[int, int]:
    scale = side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: scale down, do not clip
        image = image.point(lambda v: v / 256).convert("L")
    if image.mode in ("P", "PA", "LA", "RGBA", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
