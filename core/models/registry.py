"""The models a person added, by name, kept in models.json in the data folder; and model hashes."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from ..errors import ModelLoadError
from ..storage import data_dir, read_json, write_json_atomic
from .sources import ModelSource, check_dit_weights, dit_weight_files, resolve_source

DEMO_NAME = "demo"
DEMO_FOLDER = Path(__file__).resolve().parents[2] / "resources" / "demo-model"


def _registry_path() -> Path:
    return data_dir() / "models.json"


def list_models() -> list[dict]:
    """The models a person registered (an entry without a text name and path, in a damaged file, is left out)."""
    data = read_json(_registry_path(), {})
    models = data.get("models") if isinstance(data, dict) else None
    return [m for m in models if isinstance(m, dict) and isinstance(m.get("name"), str)
            and isinstance(m.get("path"), str)] if isinstance(models, list) else []


def training_checkpoint(path: Path) -> tuple[Path, int] | None:
    """(run folder, step) when `path` is a training checkpoint's model folder (RUN/checkpoints/step-N/model)."""
    parts = path.parts
    if path.name == "model" and len(parts) >= 4 and parts[-3] == "checkpoints" and parts[-2].startswith("step-") \
            and parts[-2][5:].isdigit():
        return Path(*parts[:-3]), int(parts[-2][5:])
    return None


def default_name(path: Path) -> str:
    """A registered name for a model added without one: a training checkpoint's model folder (every one is
    called `model`) is named after its run and step, "RUN step 1200"; anything else after its folder or file."""
    checkpoint = training_checkpoint(path)
    if checkpoint is not None:
        return f"{checkpoint[0].name} step {checkpoint[1]}"
    return path.stem if path.is_file() else path.name


def demo_available() -> bool:
    return (DEMO_FOLDER / "model_index.json").is_file()


def available_models() -> list[dict]:
    """What can be chosen: the built-in demo model (when installed) first, then the registered ones."""
    demo = [{"name": DEMO_NAME, "path": str(DEMO_FOLDER), "kind": "built-in"}] if demo_available() else []
    return demo + list_models()


def demo_source() -> ModelSource:
    if not demo_available():
        raise ModelLoadError(
            f"The built-in demo model is missing ({DEMO_FOLDER}). Build it with `python -m trainer.demo`, "
            "or pass --model PATH to a Lumina-Image 2.0 model."
        )
    return resolve_source(DEMO_FOLDER, name=DEMO_NAME)


def add_model(path: str | Path, name: str | None = None, components: str | Path | None = None) -> dict:
    """Validate a source and remember it. A name already given to another model is refused (re-adding the
    same model under its name updates its entry)."""
    resolved = Path(path).expanduser().resolve()
    source = resolve_source(path, components, name or default_name(resolved))
    if source.name == DEMO_NAME:
        raise ModelLoadError("'demo' is reserved for the built-in model; choose another name with --name.")
    if resolved == DEMO_FOLDER.resolve():
        raise ModelLoadError("That is the built-in demo model; it is always available as 'demo'.")
    models = list_models()
    same = [m["name"] for m in models if Path(m["path"]) == resolved and m["name"] != source.name]
    if same:  # one model, one name: the library's model filter would otherwise list it twice
        raise ModelLoadError(f"{resolved} is already registered as '{same[0]}' (remove it first to rename it).")
    taken = [m["path"] for m in models if m["name"] == source.name and Path(m["path"]) != resolved]
    if taken:
        raise ModelLoadError(f"A model named '{source.name}' is registered already ({taken[0]}). Give this one "
                             "another name (--name), or remove that one first.")
    check_dit_weights(source)
    entry = {
        "name": source.name,
        "path": str(resolved),
        "components": str(source.components) if source.is_single_file else None,
        "kind": "single-file" if source.is_single_file else "diffusers",
        "size_bytes": sum(f.stat().st_size for f in dit_weight_files(source)),
        "added": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_json_atomic(_registry_path(), {"models": [m for m in models if m["name"] != source.name] + [entry]})
    return entry


def remove_model(name: str) -> None:
    models = list_models()
    if not any(m["name"] == name for m in models):
        raise ModelLoadError(f"No model named '{name}' is registered.")
    write_json_atomic(_registry_path(), {"models": [m for m in models if m["name"] != name]})


def find_model(spec: str | None, components: str | Path | None = None) -> ModelSource:
    """A path or a registered name -> ModelSource; no model (or "demo") is the built-in demo model."""
    if not spec or spec == DEMO_NAME:
        return demo_source()
    looks_like_path = any(sep in spec for sep in ("/", "\\")) or spec.startswith(("~", "."))
    if looks_like_path or Path(spec).expanduser().exists():
        if components is None and Path(spec).expanduser().resolve() == DEMO_FOLDER.resolve():
            return demo_source()  # the same files keep one name, however they are named
        return resolve_source(spec, components)
    for entry in list_models():
        if entry["name"] == spec:
            return resolve_source(entry["path"], components or entry.get("components"), name=entry["name"])
    raise ModelLoadError(f"Model not found: '{spec}' is neither an existing path nor a registered model name.")


def model_hash(source: ModelSource) -> str:
    """sha256 over the DiT's weight files, cached by path, size and modification time."""
    files = dit_weight_files(source)
    stamp = "|".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    cache_path = data_dir() / "cache" / "hashes.json"
    cache = read_json(cache_path, {})
    if stamp in cache:
        return cache[stamp]
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
    cache[stamp] = digest.hexdigest()
    write_json_atomic(cache_path, cache)
    return cache[stamp]
