"""Caption datasets on disk: the formats people have, read one way for the captioner, the Caption panel and
the trainer, and the one atomic caption writer.

Formats:
  folder       images with a `.txt` beside each (each non-empty line is an alternative caption)
  imagefolder  Hugging Face imagefolder: `metadata.jsonl` with `file_name` and a text column, or a `captions`
               list of alternative captions (our exports: `text` the first, `captions` all)
  jsonl        the authors' files: {"path", "prompt"} (system prompt "base") or
               {"image_path", "super_high_quality_caption"} (system prompt "align")
Nothing here raises on a bad item: it is listed with its reason. Only a dataset file that cannot be read at
all raises `DatasetError`.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LuminaError
from .captioning.files import clean_caption, read_captions, sidecar, split_captions

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
TEXT_COLUMNS = ("text", "caption", "prompt", "description")
AUTHORS_FORMATS = {("path", "prompt"): "base", ("image_path", "super_high_quality_caption"): "align"}
HIDDEN_FOLDERS = (".trash", ".git")  # never images of the dataset


class DatasetError(LuminaError):
    """A dataset file or folder cannot be read at all."""


@dataclass
class Listing:
    """What a dataset holds: (image, its alternative captions) pairs, and what was skipped and why."""
    pairs: list[tuple[Path, list[str]]] = field(default_factory=list)
    no_caption: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # "path: why"
    default_prompt: str = "real"  # the system prompt the format implies


def detect_format(path: Path) -> str:
    if path.is_file():
        return "jsonl"
    if (path / "metadata.jsonl").is_file():
        return "imagefolder"
    return "folder"




def read_dataset_captions(path: Path, fmt: str = "auto") -> Listing:
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "folder":
        return _read_folder(path)
    if fmt == "imagefolder":
        return _read_imagefolder(path)
    return _read_jsonl(path)


def list_images(folder: Path, recursive: bool = True) -> list[Path]:
    """The images in a folder, sorted, with `os.scandir` (50,000 files in a fraction of a second; a
    `Path.rglob` plus `is_file` per file takes several times longer). Hidden folders are left out."""
    found, stack = [], [folder]  # strings until the end: sorting Paths is several times slower
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError as exc:
            if current == folder:
                raise DatasetError(f"{folder} cannot be listed ({exc.strerror or exc}).") from None
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if recursive and not entry.name.startswith(".") and entry.name not in HIDDEN_FOLDERS:
                    stack.append(Path(entry.path))
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and not entry.name.startswith(".") \
                    and entry.is_file():  # a FIFO or device named like an image would block whoever opens it
                found.append(entry.path)
    return [Path(path) for path in sorted(found)]






def _reason(exc: Exception) -> str:
    return "file not found" if isinstance(exc, FileNotFoundError) else (str(exc) or type(exc).__name__)


def _read_folder(path: Path) -> Listing:
    listing = Listing()
    for image in list_images(path):
        try:
            captions = read_captions(image)
        except (OSError, UnicodeDecodeError) as exc:
            listing.unreadable.append(f"{sidecar(image)}: caption unreadable ({_reason(exc)})")
            continue
        if captions:
            listing.pairs.append((image, captions))
        else:
            listing.no_caption.append(str(image))
    return listing


def _read_imagefolder(path: Path) -> Listing:
    listing = Listing()
    for number, record in _jsonl_records(path / "metadata.jsonl", listing):
        file_name = record.get("file_name")
        if not isinstance(file_name, str):
            listing.unreadable.append(f"{path / 'metadata.jsonl'} line {number}: no file_name")
        elif captions := _imagefolder_captions(record):
            listing.pairs.append((path / file_name, captions))
        else:
            listing.no_caption.append(str(path / file_name))
    return listing


def _imagefolder_captions(record: dict) -> list[str]:
    """A `captions` list (our exports write every alternative there), else the first text column's lines."""
    if isinstance(record.get("captions"), list):
        return [c for c in map(clean_caption, filter(lambda c: isinstance(c, str), record["captions"])) if c]
    column = next((c for c in TEXT_COLUMNS if isinstance(record.get(c), str)), None)
    return split_captions(record[column]) if column else []


def _read_jsonl(path: Path) -> Listing:
    listing, formats = Listing(), Counter()
    for number, record in _jsonl_records(path, listing):
        for (image_key, caption_key), prompt_name in AUTHORS_FORMATS.items():
            if image_key in record:
                formats[prompt_name] += 1
                caption = record.get(caption_key)
                image = path.parent / str(record[image_key])
                if isinstance(caption, str) and caption.strip():
                    listing.pairs.append((image, split_captions(caption) or [caption.strip()]))
                else:
                    listing.no_caption.append(str(image))
                break
        else:
            listing.unreadable.append(f"{path} line {number}: neither 'path' nor 'image_path' in the record")
    listing.default_prompt = formats.most_common(1)[0][0] if formats else "base"
    return listing


def _jsonl_records(path: Path, listing: Listing):
    """(line number, record) for each JSON object; a .json file may hold one list of them."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark first is no part of the JSON
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path} cannot be read ({exc}).") from None
    if path.suffix == ".json":
        try:
            records = json.loads(text)
        except ValueError as exc:
            raise DatasetError(f"{path} is not valid JSON ({exc}).") from None
        yield from ((i + 1, r) for i, r in enumerate(records if isinstance(records, list) else []))
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            listing.unreadable.append(f"{path} line {number}: not valid JSON")
            continue
        if isinstance(record, dict):
            yield number, record
        else:
            listing.unreadable.append(f"{path} line {number}: not a JSON object")
