"""Training datasets: read the formats people have, check them, and list what was skipped and why.

Formats:
  folder       images with a `.txt` beside each (each non-empty line is an alternative caption)
  imagefolder  Hugging Face imagefolder: `metadata.jsonl` with `file_name` and a text column
  jsonl        the authors' files: {"path", "prompt"} (system prompt "base") or
               {"image_path", "super_high_quality_caption"} (system prompt "align")
Nothing here raises on a bad item: it is skipped and listed in the report.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from core.prompts import system_prompt_text

from .buckets import bucket_sizes, nearest_bucket
from .config import ConfigError, DatasetConfig

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
TEXT_COLUMNS = ("text", "caption", "prompt", "description")
AUTHORS_FORMATS = {("path", "prompt"): "base", ("image_path", "super_high_quality_caption"): "align"}


@dataclass
class Item:
    image: Path
    captions: list[str]  # alternatives; one is drawn per use
    system_prompt: str  # the text (not the name)
    dataset: str
    width: int = 0
    height: int = 0


@dataclass
class DatasetReport:
    name: str
    path: str
    format: str
    items: int = 0
    no_caption: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # "path: why"
    too_small: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return len(self.no_caption) + len(self.unreadable) + len(self.too_small)


def detect_format(path: Path) -> str:
    if path.is_file():
        return "jsonl"
    if (path / "metadata.jsonl").is_file():
        return "imagefolder"
    return "folder"


def read_dataset(config: DatasetConfig, index: int) -> tuple[list[Item], DatasetReport]:
    """The usable items of one dataset (with their sizes) and a report of everything skipped."""
    path = Path(config.path)
    if not path.exists():
        raise ConfigError(f"datasets[{index}].path: {path} does not exist.")
    name = config.name or path.stem
    fmt = detect_format(path) if config.format == "auto" else config.format
    report = DatasetReport(name=name, path=str(path), format=fmt)
    if fmt == "folder":
        pairs, default_prompt = _read_folder(path, report), "real"
    elif fmt == "imagefolder":
        pairs, default_prompt = _read_imagefolder(path, report), "real"
    else:
        pairs, default_prompt = _read_jsonl(path, report)
    prompt_name = default_prompt if config.system_prompt == "auto" else config.system_prompt
    system_prompt = system_prompt_text(prompt_name)

    items = []
    for image_path, captions in pairs:
        try:
            with Image.open(image_path) as image:
                width, height = image.size
                # Decoded once here, as the latent encoder will, so a truncated file is reported now, not
                # after the run has started. JPEGs decode at 1/8 scale: enough to read every byte, far cheaper.
                image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                image.load()
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
            report.unreadable.append(f"{image_path}: {_reason(exc)}")
            continue
        if min(width, height) < config.min_side:
            report.too_small.append(f"{image_path}: {width}x{height} (min_side is {config.min_side})")
            continue
        items.extend(Item(image_path, captions, system_prompt, name, width, height) for _ in range(config.repeats))
    report.items = len(items) // config.repeats
    return items, report


def _reason(exc: Exception) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "not an image Pillow can read"
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    return str(exc) or type(exc).__name__


def _captions(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _read_folder(path: Path, report: DatasetReport) -> list[tuple[Path, list[str]]]:
    pairs = []
    for image in sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        sidecar = image.with_suffix(".txt")
        try:
            captions = _captions(sidecar.read_text(encoding="utf-8")) if sidecar.is_file() else []
        except (OSError, UnicodeDecodeError) as exc:
            report.unreadable.append(f"{sidecar}: caption unreadable ({exc})")
            continue
        if captions:
            pairs.append((image, captions))
        else:
            report.no_caption.append(str(image))
    return pairs


def _read_imagefolder(path: Path, report: DatasetReport) -> list[tuple[Path, list[str]]]:
    pairs = []
    for number, record in _jsonl_records(path / "metadata.jsonl", report):
        file_name = record.get("file_name")
        column = next((c for c in TEXT_COLUMNS if isinstance(record.get(c), str)), None)
        if not isinstance(file_name, str):
            report.unreadable.append(f"{path / 'metadata.jsonl'} line {number}: no file_name")
        elif column is None or not _captions(record[column]):
            report.no_caption.append(str(path / file_name))
        else:
            pairs.append((path / file_name, _captions(record[column])))
    return pairs


def _read_jsonl(path: Path, report: DatasetReport) -> tuple[list[tuple[Path, list[str]]], str]:
    pairs, formats = [], Counter()
    for number, record in _jsonl_records(path, report):
        for (image_key, caption_key), prompt_name in AUTHORS_FORMATS.items():
            if image_key in record:
                formats[prompt_name] += 1
                caption = record.get(caption_key)
                image = path.parent / str(record[image_key])
                if isinstance(caption, str) and caption.strip():
                    pairs.append((image, _captions(caption) or [caption.strip()]))
                else:
                    report.no_caption.append(str(image))
                break
        else:
            report.unreadable.append(f"{path} line {number}: neither 'path' nor 'image_path' in the record")
    default = formats.most_common(1)[0][0] if formats else "base"
    return pairs, default


def _jsonl_records(path: Path, report: DatasetReport):
    """(line number, record) for each JSON object; a .json file may hold one list of them."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} cannot be read ({exc}).") from None
    if path.suffix == ".json":
        try:
            records = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc}).") from None
        yield from ((i + 1, r) for i, r in enumerate(records if isinstance(records, list) else []))
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            report.unreadable.append(f"{path} line {number}: not valid JSON")
            continue
        if isinstance(record, dict):
            yield number, record
        else:
            report.unreadable.append(f"{path} line {number}: not a JSON object")


def bucket_histogram(items: list[Item], resolution: int) -> dict[str, int]:
    """How many items land in each bucket ("WxH": count) at a stage resolution."""
    buckets = bucket_sizes(resolution)
    counts = Counter(nearest_bucket(item.width, item.height, buckets) for item in items)
    return {f"{w}x{h}": n for (w, h), n in sorted(counts.items())}


def format_report(reports: list[DatasetReport], histograms: dict[str, dict[str, int]], shown: int = 5) -> str:
    lines = []
    for report in reports:
        lines.append(f"dataset '{report.name}' ({report.format}, {report.path}): {report.items} usable, "
                     f"{report.skipped} skipped")
        for label, entries in (("without a caption", report.no_caption), ("unreadable", report.unreadable),
                               ("too small", report.too_small)):
            if entries:
                lines.append(f"  {len(entries)} {label}:")
                lines.extend(f"    {entry}" for entry in entries[:shown])
                if len(entries) > shown:
                    lines.append(f"    ... and {len(entries) - shown} more (all listed in dataset_report.json)")
    for stage, histogram in histograms.items():
        cells = ", ".join(f"{size}: {count}" for size, count in histogram.items())
        lines.append(f"stage '{stage}' buckets: {cells}")
    return "\n".join(lines)
