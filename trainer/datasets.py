"""Training datasets: read the formats people have (core/datasets.py and core/captioning/files.py, shared
with the captioner and the Caption panel), check each image, and list what was skipped and why. Nothing here
raises on a bad item: it is skipped and listed in the report.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from core.captioning.state import review_statuses
from core.datasets import DatasetError, detect_format, read_dataset_captions
from core.images import open_image, problem
from core.generation.prompts import system_prompt_text

from .buckets import bucket_sizes, nearest_bucket
from .config import REVIEW_FILTERS, ConfigError, DatasetConfig, RunConfig, StageConfig

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
    # Used, but worth a look: images of one name with another extension read one caption file, and an image
    # listed twice (a .jsonl) trains twice as often.
    same_name: list[str] = field(default_factory=list)
    review: str = "not_rejected"
    left_out_by_review: dict[str, int] = field(default_factory=dict)  # review status -> images the filter left out

    @property
    def skipped(self) -> int:
        return len(self.no_caption) + len(self.unreadable) + len(self.too_small) + sum(self.left_out_by_review.values())


class CheckStopped(Exception):
    """The person stopped a dataset check before it finished."""


def read_dataset(config: DatasetConfig, index: int, should_stop=None) -> tuple[list[Item], DatasetReport]:
    """The usable items of one dataset (with their sizes) and a report of everything skipped.
    `should_stop()` is asked between images; when it says so, CheckStopped is raised."""
    path = Path(config.path)
    if not path.exists():
        raise ConfigError(f"datasets[{index}].path: {path} does not exist.")
    name = config.name or path.stem
    fmt = detect_format(path) if config.format == "auto" else config.format
    report = DatasetReport(name=name, path=str(path), format=fmt)
    try:
        listing = read_dataset_captions(path, fmt)
    except DatasetError as exc:
        raise ConfigError(str(exc)) from None
    report.no_caption, report.unreadable = listing.no_caption, listing.unreadable
    report.review = config.review
    pairs = review_filtered(listing.pairs, path, config.review, report) if fmt == "folder" else listing.pairs
    report.same_name = same_names([image for image, _ in pairs])
    prompt_name = listing.default_prompt if config.system_prompt == "auto" else config.system_prompt
    system_prompt = system_prompt_text(prompt_name)

    items = []
    for image_path, captions in pairs:
        if should_stop is not None and should_stop():
            raise CheckStopped()
        try:
            with open_image(image_path) as image:
                width, height = image.size
                # Decoded once here, as the latent encoder will, so a truncated file is reported now, not
                # after the run has started. JPEGs decode at 1/8 scale: enough to read every byte, far cheaper.
                image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                image.load()
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            report.unreadable.append(f"{image_path}: {problem(exc)}")
            continue
        if min(width, height) < config.min_side:
            report.too_small.append(f"{image_path}: {width}x{height} (min_side is {config.min_side})")
            continue
        items.extend(Item(image_path, captions, system_prompt, name, width, height) for _ in range(config.repeats))
    report.items = len(items) // config.repeats
    return items, report


def review_filtered(pairs: list[tuple[Path, list[str]]], folder: Path, review: str,
                    report: DatasetReport) -> list[tuple[Path, list[str]]]:
    """The pairs the review filter keeps (the Caption tab's marks in the folder's state file); what it leaves
    out is counted per status in the report."""
    if review == "all":
        return pairs
    statuses = review_statuses(folder)
    kept = []
    for image, captions in pairs:
        status = statuses.get(image.relative_to(folder).as_posix(), "unreviewed")
        if status == "rejected" or review == "approved" and status != "approved":
            report.left_out_by_review[status] = report.left_out_by_review.get(status, 0) + 1
        else:
            kept.append((image, captions))
    return kept


def same_names(images: list[Path]) -> list[str]:
    """The groups of images that share a name but for the extension (so one caption file), or one path
    listed more than once; one line per group."""
    groups: dict[Path, list[Path]] = {}
    for image in images:
        groups.setdefault(Path(image).with_suffix(""), []).append(Path(image))
    return [", ".join(str(image) for image in group) for group in groups.values() if len(group) > 1]


def stage_items(stage: StageConfig, items: list[Item]) -> list[Item]:
    return [item for item in items if not stage.datasets or item.dataset in stage.datasets]


def stage_validation(config: RunConfig, stage: StageConfig, validation: list[Item]) -> list[Item]:
    """A stage's validation images: a named validation dataset serves every stage; a held-out share follows
    the stage's datasets."""
    return validation if config.validation_dataset else stage_items(stage, validation)


VALIDATION_TIMESTEPS = 8  # forward passes per validation image (trainer/validation.py)
AUTO_VALIDATION = 0.05  # the share held out when `validation` is unset ...
AUTO_VALIDATION_IMAGES = 100  # ... and the datasets hold at least this many images


def validation_share(config: RunConfig, images: int) -> float:
    if config.validation is not None:
        return config.validation
    return AUTO_VALIDATION if images >= AUTO_VALIDATION_IMAGES and not config.validation_dataset else 0.0


def split_validation(config: RunConfig, items: list[Item]) -> tuple[list[Item], list[Item]]:
    """(training items, validation items, each image once). A named validation dataset is all validation;
    else each dataset gives its share of images (never its last one), chosen by a hash of the dataset's name
    and the file name: the same images after a resume, a reorder or a moved folder."""
    if config.validation_dataset:
        held = {item.image for item in items if item.dataset == config.validation_dataset}
    else:
        share = validation_share(config, len({item.image for item in items}))
        held = set()
        for dataset in dict.fromkeys(item.dataset for item in items):
            images = sorted({item.image for item in items if item.dataset == dataset},
                            key=lambda image: (hashlib.sha1(f"{dataset}/{image.name}".encode()).digest(), str(image)))
            held.update(images[: min(math.ceil(share * len(images)), len(images) - 1)])
    training = [item for item in items if item.image not in held]
    validation = list({item.image: item for item in items if item.image in held}.values())
    return training, validation


@dataclass
class DatasetCheck:
    """What `lumina-studio train --check` and the Train wizard report about a run's data."""

    items: list[Item]  # the training items
    reports: list[DatasetReport]
    histograms: dict[str, dict[str, int]]  # per stage: "WxH" -> images
    small_buckets: dict[str, dict[str, int]]  # per stage: the buckets with fewer images than its micro-batch
    empty_stages: list[str]  # a message for each stage left without a usable image
    validation: list[Item] = field(default_factory=list)  # held out for the validation loss
    validation_note: str = ""

    def text(self) -> str:
        report = format_report(self.reports, self.histograms, self.small_buckets)
        return f"{report}\n{self.validation_note}" if self.validation_note else report


def validation_note(config: RunConfig, training: list[Item], validation: list[Item]) -> str:
    """One line: what is held out for the validation loss and what a validation costs, or why there is none."""
    if not validation:
        if config.validation == 0:
            return "validation loss: off (validation = 0)."
        return ("validation loss: off (fewer than 100 images; set validation = 0.05 to hold 5% out, or name a "
                "validation_dataset).")
    where = (f"the dataset '{config.validation_dataset}'" if config.validation_dataset else
             f"{validation_share(config, len({i.image for i in training}) + len(validation)):.0%} of each dataset")
    when = f"every {config.validate_every} steps and " if config.validate_every else ""
    return (f"validation loss: {len(validation)} images held out ({where}), computed {when}at each checkpoint: "
            f"{len(validation) * VALIDATION_TIMESTEPS} forward passes, about the time of "
            f"{math.ceil(len(validation) * VALIDATION_TIMESTEPS / 3)} training samples.")


def check_datasets(config: RunConfig, should_stop=None) -> DatasetCheck:
    """Read every dataset, hold the validation images out, then bucket each stage's images."""
    items, reports = [], []
    for index, dataset in enumerate(config.datasets):
        found, report = read_dataset(dataset, index, should_stop)
        items += found
        reports.append(report)
    items, validation = split_validation(config, items)
    histograms, small, empty = {}, {}, []
    for index, stage in enumerate(config.stages):
        chosen = stage_items(stage, items)
        if not chosen:
            empty.append(f"stages[{index}] ('{stage.name}') has no usable images: "
                         + "; ".join(f"'{r.name}': {r.items} usable, {r.skipped} skipped" for r in reports))
            continue
        histograms[stage.name] = bucket_histogram(chosen, stage.resolution)
        small[stage.name] = {size: n for size, n in histograms[stage.name].items() if n < stage.micro_batch_size}
    return DatasetCheck(items, reports, histograms, small, empty, validation,
                        validation_note(config, items, validation))


def bucket_histogram(items: list[Item], resolution: int) -> dict[str, int]:
    """How many items land in each bucket ("WxH": count) at a stage resolution."""
    buckets = bucket_sizes(resolution)
    counts = Counter(nearest_bucket(item.width, item.height, buckets) for item in items)
    return {f"{w}x{h}": n for (w, h), n in sorted(counts.items())}


def format_report(reports: list[DatasetReport], histograms: dict[str, dict[str, int]],
                  small_buckets: dict[str, dict[str, int]] | None = None, shown: int = 5) -> str:
    lines = []
    for report in reports:
        lines.append(f"dataset '{report.name}' ({report.format}, {report.path}): {report.items} usable, "
                     f"{report.skipped} skipped")
        shared = "sharing a name (all used: one caption file between them, or listed twice)"
        if report.left_out_by_review:
            counts = ", ".join(f"{count} {status}" for status, count in sorted(report.left_out_by_review.items()))
            lines.append(f"  left out by the review filter ({REVIEW_FILTERS[report.review]}): {counts}")
        for label, entries in (("without a caption", report.no_caption), ("unreadable", report.unreadable),
                               ("too small", report.too_small), (shared, report.same_name)):
            if entries:
                lines.append(f"  {len(entries)} {label}:")
                lines.extend(f"    {entry}" for entry in entries[:shown])
                if len(entries) > shown:
                    lines.append(f"    ... and {len(entries) - shown} more (all listed in dataset_report.json)")
    for stage, histogram in histograms.items():
        cells = ", ".join(f"{size}: {count}" for size, count in histogram.items())
        lines.append(f"stage '{stage}' buckets: {cells}")
        small = (small_buckets or {}).get(stage)
        if small:
            cells = ", ".join(f"{size}: {count}" for size, count in small.items())
            lines.append(f"  fewer images than the micro-batch (their batches are smaller, their steps noisier): "
                         f"{cells}")
    return "\n".join(lines)
