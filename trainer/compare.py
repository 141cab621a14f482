"""Compare checkpoints: the run's sample prompts drawn by the base model and by each checkpoint with the same
seeds, at the last stage's resolution, with each model's validation loss and prompt alignment under its
column, so the best checkpoint is picked on evidence.

    lumina-studio compare RUN_DIR [--checkpoints step-00000120 ...] [--no-base] [--device auto] [--json]

Cells are kept in RUN/compare/<column>/<row>.png and reused by the next comparison; a sample the training drew
at that step and size is reused as it is. Writes RUN/compare/grid.json (what the monitor shows) and
RUN/compare/grid.png (for a terminal). Ctrl+C (or the monitor's Stop) keeps the cells drawn so far.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from core.cli import stop_on_sigterm
from core.cpu_budget import CpuWork
from core.errors import LuminaError
from core.storage import read_json, write_atomic, write_json_atomic

from .run_folder import ALIGNMENT_FILE, RunFolder, checkpoint_info

GRID_FILE = "grid.json"


@dataclass
class Column:
    label: str  # "base model", "step 120"
    name: str  # the cells' folder and alignment.json's key: "base model" or "step-00000120"
    model: str  # the model folder (or single file)
    components: str
    validation_loss: float | None = None
    alignment: dict | None = None


def columns_of(run: RunFolder, checkpoints: list[str] | None, base: bool) -> list[Column]:
    plan = run.read_plan()
    chosen = [c for c in run.complete_checkpoints() if checkpoints is None or c.name in checkpoints]
    missing = sorted(set(checkpoints or ()) - {c.name for c in chosen})
    if missing:
        raise ValueError(f"{run.path.name} has no complete checkpoint {', '.join(missing)}.")
    columns = [Column("base model", "base model", plan["base_model"], plan.get("components", ""))] if base else []
    for path in chosen:
        info = checkpoint_info(path)
        columns.append(Column(f"step {info.step}", path.name, str(path / "model"), ""))
    return columns


def compare(run: RunFolder, device: str = "auto", checkpoints: list[str] | None = None, base: bool = True,
            progress=None) -> Path:
    """Draw (or reuse) every cell, measure what is missing, write grid.json and grid.png; returns grid.png."""
    import torch

    from core.devices import resolve_device
    from core.models import loader
    from core.models.sources import resolve_source

    from .config import load_config
    from .features import FeatureCache
    from .samples import SampleMaker
    from .datasets import VALIDATION_TIMESTEPS
    from .validation import validation_loss

    config = load_config(run.config)
    if not config.samples.prompts:
        raise ValueError(f"{run.path.name} has no sample prompts: add [samples] prompts to its config.toml.")
    stage_index = len(config.stages) - 1
    stage = config.stages[stage_index]
    cache = FeatureCache(run.path)
    manifest = cache.manifest(stage_index)
    columns = columns_of(run, checkpoints, base)
    folder = run.path / "compare"
    torch_device = resolve_device(device)
    dtype = torch.bfloat16 if torch_device.type == "cuda" else torch.float32
    plan = run.read_plan()
    components = Path(plan.get("components") or plan["base_model"])
    maker = SampleMaker(components, config.samples, torch_device, dtype)
    prompts = [(text, cache.load_text(path)) for text, path in zip(config.samples.prompts, manifest["samples"])]
    negative = cache.load_text(manifest["empty"])
    alignment = read_json(run.path / ALIGNMENT_FILE, {})
    size = (stage.resolution, stage.resolution)
    total, done = len(columns) * len(prompts), 0
    for column in columns:
        cells = [folder / column.name / f"cell-{row}.png" for row in range(len(prompts))]
        cells[0].parent.mkdir(parents=True, exist_ok=True)
        for row, cell in enumerate(cells):  # the training's own samples at this step and size, as they are
            sample = run.samples / f"{column.name}-{row}.png"
            if not cell.exists() and sample.exists() and _size_of(sample) == size:
                shutil.copyfile(sample, cell)
        missing = [row for row, cell in enumerate(cells) if not cell.exists()]
        column.validation_loss = _saved_validation(run, column, stage.resolution)
        wants_loss = column.validation_loss is None and bool(manifest.get("validation"))
        done += len(cells) - len(missing)
        if missing or wants_loss:
            model = loader.load_dit(resolve_source(column.model, column.components or None), dtype, torch_device)
            weights = model.state_dict()
            for row in missing:  # one at a time: a stop keeps what is drawn
                maker.make(weights, model.config, [prompts[row]], negative, size, cells[0].parent, None,
                           stem="cell", model_name=column.label, rows=[row])
                done += 1
                if progress:
                    progress(done, total)
            if wants_loss:
                column.validation_loss = validation_loss(model.eval(), cache, manifest["validation"], config.seed,
                                                         VALIDATION_TIMESTEPS, torch_device, dtype,
                                                         config.pooled_loss_weight)
            del model, weights
        elif progress:
            progress(done, total)
        column.alignment = alignment.get(column.name)
    grid = {"resolution": stage.resolution, "prompts": config.samples.prompts, "seed": config.samples.seed,
            "columns": [asdict(c) for c in columns],
            "cells": [[f"{c.name}/cell-{row}.png" for row in range(len(prompts))] for c in columns]}
    write_json_atomic(folder / GRID_FILE, grid)
    return write_grid_png(folder, grid)


def _saved_validation(run: RunFolder, column: Column, resolution: int) -> float | None:
    if column.name == "base model":
        return None
    info = checkpoint_info(run.checkpoints / column.name)
    return info.validation_loss if info.validation_resolution == resolution else None


def _size_of(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def alignment_text(report: dict | None) -> str:
    """A model's prompt alignment (alignment.json), short: "single 94%, pairs 92%"; "" when not measured."""
    if not report:
        return ""
    return f"single {report.get('single', {}).get('all', 0):.0%}, pairs {report.get('pair', {}).get('all', 0):.0%}"


def best_column(columns: list[dict]) -> dict | None:
    """The column with the lowest validation loss (all are measured at one resolution here)."""
    measured = [c for c in columns if c.get("validation_loss") is not None]
    return min(measured, key=lambda c: c["validation_loss"]) if measured else None


def column_notes(column: dict, best: bool = False) -> list[str]:
    """The lines under a column: its validation loss (starred when the best) and, on the scene world, its
    prompt alignment."""
    notes = []
    if column.get("validation_loss") is not None:
        notes.append(f"validation {column['validation_loss']:.5f}" + ("  ★ best" if best else ""))
    if column.get("alignment"):
        notes.append(alignment_text(column["alignment"]))
    return notes


def write_grid_png(folder: Path, grid: dict, cell: int = 192) -> Path:
    """The grid as one image: a row per prompt, a column per model, its notes under the header."""
    import textwrap

    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=14)
    label_width, header, pad = 240, 64, 6
    columns, prompts = grid["columns"], grid["prompts"]
    width = label_width + len(columns) * (cell + pad) + pad
    height = header + len(prompts) * (cell + pad) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    best = best_column(columns)
    for index, column in enumerate(columns):
        x = label_width + pad + index * (cell + pad)
        draw.text((x, 6), column["label"], fill="black", font=font)
        for line, note in enumerate(column_notes(column, column is best)):
            draw.text((x, 24 + 16 * line), note, fill="#444444", font=font)
        for row, relative in enumerate(grid["cells"][index]):
            path = folder / relative
            if path.exists():
                with Image.open(path) as image:
                    canvas.paste(image.convert("RGB").resize((cell, cell)), (x, header + row * (cell + pad)))
    for row, prompt in enumerate(prompts):
        lines = textwrap.wrap(prompt, 30)[:10]
        draw.multiline_text((pad, header + row * (cell + pad) + 4), "\n".join(lines), fill="black", font=font)
    target = folder / "grid.png"
    write_atomic(target, lambda handle: canvas.save(handle, format="PNG"))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lumina-studio compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a training run's folder")
    parser.add_argument("--checkpoints", nargs="+", metavar="STEP", help="only these (e.g. step-00000120)")
    parser.add_argument("--no-base", action="store_true", help="leave the base model's column out")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--json", action="store_true", help="progress as JSON lines on stderr")
    args = parser.parse_args(argv)
    run = RunFolder(Path(args.run_dir).expanduser())
    stop_on_sigterm()  # the monitor's Stop: the cells drawn so far are kept

    def progress(done: int, total: int) -> None:
        line = json.dumps({"done": done, "total": total}) if args.json else f"{done}/{total} images"
        print(line, file=sys.stderr, flush=True)

    try:
        if not run.config.is_file():
            raise ValueError(f"{run.path} is not a training run folder (no config.toml).")
        from core.devices import resolve_device

        with CpuWork("comparison", resolve_device(args.device).type):
            print(compare(run, args.device, args.checkpoints, not args.no_base, progress))
        return 0
    except KeyboardInterrupt:
        print("lumina-studio compare: stopped (the images drawn so far are kept)", file=sys.stderr)
        return 130
    except (ValueError, OSError, LuminaError) as exc:
        print(f"lumina-studio compare: error: {exc}", file=sys.stderr)
        return 1
