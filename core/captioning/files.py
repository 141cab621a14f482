"""Caption files beside their images: where a caption is read from and written to disk.

An image's captions are in a `.txt` of the same name (its sidecar), one alternative per line, UTF-8. Every
caption the app or the CLI writes goes through `write_captions` (atomic); every reader through `read_captions`.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

from ..images import check_regular_file
from ..storage import write_text_atomic


def clean_caption(text: str) -> str:
    """One caption as one line: a byte-order mark (PowerShell 5 begins its UTF-8 files with one), NUL and other
    control characters (an editor's or a model's) dropped, each run of white space one space."""
    kept = "".join(ch for ch in text if ch.isspace() or unicodedata.category(ch) != "Cc")
    return " ".join(kept.replace("\ufeff", "").split())


def split_captions(text: str) -> list[str]:
    """A sidecar's alternative captions: its non-empty lines, cleaned (clean_caption)."""
    return [caption for caption in map(clean_caption, text.splitlines()) if caption]


def sidecar(image: Path) -> Path:
    return image.with_suffix(".txt")


def read_captions(image: Path) -> list[str]:
    """The image's alternative captions from its `.txt` ([] when there is none); raises OSError or
    UnicodeDecodeError when one exists but cannot be read."""
    path = sidecar(image)
    try:
        check_regular_file(path)
        return split_captions(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []


def decode_legacy(data: bytes) -> str:
    """A caption file that is not UTF-8, as its writer most likely meant it (Windows-1252, else Latin-1)."""
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def write_captions(image: Path, captions: list[str]) -> None:
    """Write the image's `.txt` atomically (temp file, fsync, rename: a crash leaves the old captions or the
    new ones). One caption per line, cleaned (a caption's own line breaks become spaces, control characters
    go). Errors are raised."""
    lines = [clean_caption(c) for c in captions]
    write_text_atomic(sidecar(image), "".join(line + "\n" for line in lines if line))
