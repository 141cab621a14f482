"""Where the parts of a Lumina-Image 2.0 model are, checked without loading weights (no torch here).

A source is either a diffusers folder (model_index.json; transformer/, text_encoder/, tokenizer/, vae/,
scheduler/) or a single-file DiT (.safetensors / .pth) combined with the text encoder, tokenizer, VAE
and scheduler of a diffusers folder ("components"). Every failure names the path and what is wrong.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelLoadError

PIPELINE_CLASSES = {"Lumina2Pipeline", "Lumina2Text2ImgPipeline"}
COMPONENT_FOLDERS = ("text_encoder", "tokenizer", "vae")
SINGLE_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


@dataclass(frozen=True)
class ModelSource:
    """Where each part of a model comes from."""

    name: str
    dit: Path  # a diffusers folder's transformer/ folder, or a single checkpoint file
    components: Path  # a diffusers folder providing text_encoder/, tokenizer/, vae/, scheduler/

    @property
    def is_single_file(self) -> bool:
        return self.dit.is_file()


def read_json_file(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{path} is missing.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({exc or 'nested too deeply'}).") from None


def check_components(folder: Path) -> None:
    """A folder that can supply text encoder, tokenizer and VAE: say exactly what is missing."""
    missing = [name for name in COMPONENT_FOLDERS if not (folder / name).is_dir()]
    if missing:
        raise ModelLoadError(
            f"{folder} is not a complete Lumina-Image 2.0 diffusers folder: "
            f"missing {', '.join(name + '/' for name in missing)}."
        )


def check_diffusers_folder(folder: Path) -> None:
    index = folder / "model_index.json"
    if not index.exists():
        raise ModelLoadError(
            f"{folder} is not a diffusers model folder (no model_index.json). Give a Lumina-Image 2.0 "
            "diffusers folder or a single-file DiT checkpoint."
        )
    class_name = read_json_file(index).get("_class_name", "")
    if class_name not in PIPELINE_CLASSES:
        raise ModelLoadError(
            f"{folder} holds a '{class_name or 'unknown'}' model, not Lumina-Image 2.0 (Lumina2Pipeline)."
        )
    if not (folder / "transformer").is_dir():
        raise ModelLoadError(f"{folder} is not complete: the transformer/ folder is missing.")
    check_components(folder)


def _find_components_near(checkpoint: Path) -> Path | None:
    """A diffusers folder next to a single-file checkpoint (same folder or a sibling), if exactly one."""
    candidates = []
    for base in (checkpoint.parent, checkpoint.parent.parent):
        for folder in [base, *sorted(p for p in base.iterdir() if p.is_dir())] if base.is_dir() else []:
            if all((folder / name).is_dir() for name in COMPONENT_FOLDERS):
                candidates.append(folder.resolve())
    unique = list(dict.fromkeys(candidates))
    return unique[0] if len(unique) == 1 else None


def resolve_source(model: str | Path, components: str | Path | None = None, name: str | None = None) -> ModelSource:
    """Turn a path into a ModelSource, validating what can be checked without loading weights."""
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelLoadError(f"Model not found: {path} does not exist.")
    if path.is_dir():
        check_diffusers_folder(path)
        folder = path.resolve()
        return ModelSource(name=name or folder.name, dit=folder / "transformer", components=folder)
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise ModelLoadError(
            f"{path} is neither a diffusers folder nor a checkpoint file ({', '.join(SINGLE_FILE_SUFFIXES)})."
        )
    if components is None:
        found = _find_components_near(path.resolve())
        if found is None:
            raise ModelLoadError(
                f"{path.name} holds only the DiT. Give the text encoder, tokenizer and VAE with "
                "--components DIR (a Lumina-Image 2.0 diffusers folder)."
            )
        components = found
    components = Path(components).expanduser()
    if not components.is_dir():
        raise ModelLoadError(f"Components folder not found: {components}")
    check_components(components)
    return ModelSource(name=name or path.stem, dit=path.resolve(), components=components.resolve())


def transformer_weight_files(folder: Path) -> list[Path]:
    for index_name in ("diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.exists():
            shards = sorted(set(read_json_file(index).get("weight_map", {}).values()))
            missing = [s for s in shards if not (folder / s).exists()]
            if missing:
                raise ModelLoadError(f"{folder} is partial: shard {missing[0]} listed in {index_name} is missing.")
            return [folder / s for s in shards]
    for single in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if (folder / single).exists():
            return [folder / single]
    raise ModelLoadError(f"{folder} has no weights (diffusion_pytorch_model.safetensors is missing).")


def dit_weight_files(source: ModelSource) -> list[Path]:
    return [source.dit] if source.is_single_file else transformer_weight_files(source.dit)


def describe_weights(source: ModelSource) -> tuple[int, str]:
    """Size in bytes of the DiT weights and their precision, read from safetensors headers (no loading)."""
    files = dit_weight_files(source)
    size = sum(f.stat().st_size for f in files)
    dtypes: set[str] = set()
    for file in files:
        if file.suffix == ".safetensors":
            dtypes |= {v["dtype"] for v in safetensors_header(file).values()}
    names = {"F32": "fp32", "BF16": "bf16", "F16": "fp16", "F8_E4M3": "fp8"}
    return size, "/".join(sorted(names.get(d, d.lower()) for d in dtypes)) or "unknown"


MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own limit on a header


def safetensors_header(file: Path) -> dict[str, dict]:
    """The tensors a .safetensors file declares (name -> dtype, shape, offsets), checked against the file's
    size so a truncated or fake file is refused without reading its weights."""
    problem = f"{file} is not a readable .safetensors file"
    try:
        size = file.stat().st_size
        with open(file, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if size < 8 or not 2 <= length <= size - 8:
                raise ModelLoadError(f"{problem} (its header does not fit in its {size:,} bytes).")
            if length > MAX_HEADER_BYTES:  # a sparse or fake file would have us read (and hold) all of it
                raise ModelLoadError(f"{problem} (its header claims {length:,} bytes; real ones are far smaller).")
            header = json.loads(handle.read(length))
    except RecursionError:
        raise ModelLoadError(f"{problem} (its header is nested too deeply to be a table of tensors).") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{problem} ({exc}).") from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"{problem} (its header is not a table of tensors).")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    try:
        end = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
        dtypes_ok = all(isinstance(v["dtype"], str) for v in tensors.values())
    except (TypeError, KeyError, IndexError, ValueError):
        raise ModelLoadError(f"{problem} (a tensor entry has no dtype or offsets).") from None
    if not dtypes_ok or 8 + length + end > size:
        raise ModelLoadError(f"{problem}: it is truncated ({size:,} bytes, its header needs {8 + length + end:,}). "
                             "Download or copy it again.")
    return tensors


def check_dit_weights(source: ModelSource) -> None:
    """The checks loading makes, before a model is registered: readable weights holding a Lumina DiT.

    safetensors are checked from their headers; a pickled checkpoint is opened with weights_only=True (never
    running code it holds) in a process of its own, so the app's process stays free of torch.
    """
    from .layouts import detect_layout

    files = dit_weight_files(source)
    pickles = [f for f in files if f.suffix.lower() != ".safetensors"]
    names: set[str] = set()
    for file in files:
        if file not in pickles:
            names |= set(safetensors_header(file))
    if names:
        detect_layout(names)
    for file in pickles:
        result = subprocess.run([sys.executable, "-m", "core.models.checkpoints", str(file)], capture_output=True,
                                text=True, timeout=1800, cwd=Path(__file__).resolve().parents[2])
        if result.returncode:
            reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.returncode}"
            raise ModelLoadError(reason)
