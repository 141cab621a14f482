"""Captioning adapters, one file per model family, chosen by the folder's `config.json` `model_type`
(never by a hub name). `load_captioner(folder)` is the one entry point."""

from __future__ import annotations

import importlib
import json
import pickle
from pathlib import Path

from ...errors import ModelLoadError, unreadable_reason

DEMO_NAME = "demo"
DEMO_CAPTIONER = Path(__file__).resolve().parents[3] / "resources" / "demo-captioner"

# model_type -> "module:class"; the module is imported only when its family is loaded
ADAPTERS = {
    "llava": "llava:LlavaCaptioner",
    "qwen2_vl": "qwen_vl:QwenVLCaptioner",
    "qwen2_5_vl": "qwen_vl:QwenVLCaptioner",
    "qwen3_vl": "qwen_vl:QwenVLCaptioner",
    "blip": "blip:BlipCaptioner",
    "blip-2": "blip:Blip2Captioner",
    "florence2": "florence2:Florence2Captioner",
}


def model_type(folder: Path) -> str:
    config = folder / "config.json"
    if not folder.is_dir():
        raise ModelLoadError(f"Captioning model folder {folder} does not exist.")
    try:
        kind = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except FileNotFoundError:
        raise ModelLoadError(f"{folder} has no config.json: give a transformers model folder "
                             "(the one save_pretrained writes).") from None
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelLoadError(f"{config} cannot be read ({exc}).") from None
    refuse_custom_code(folder)
    if kind not in ADAPTERS:
        raise ModelLoadError(f"{folder} holds a '{kind}' model; Lumina Studio captions with "
                             + ", ".join(sorted(ADAPTERS)) + " models, or with a local server (--server).")
    return kind


def refuse_custom_code(folder: Path) -> None:
    """Refuse a folder whose configs name code of its own (`auto_map`): transformers would run that Python
    (a terminal even asks, and `y` runs it). Every loader also passes trust_remote_code=False."""
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # read (and reported) by the loader that needs it
        if isinstance(data, dict) and "auto_map" in data:
            raise ModelLoadError(f"{path} names custom code ({', '.join(map(str, data['auto_map']))[:200]}), which "
                                 "Lumina Studio never runs. Use a model that transformers supports by itself.")


def adapter_class(kind: str):
    module, _, name = ADAPTERS[kind].partition(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def captioner_folder(spec: str | Path | None) -> Path:
    """A model folder's path; no model (or "demo") is the built-in demo captioner."""
    return DEMO_CAPTIONER if spec in (None, "", DEMO_NAME) else Path(spec).expanduser()


def load_captioner(spec: str | Path | None, device: str = "auto", dtype: str = "auto"):
    """Load the model folder with its family's adapter, from local files only."""
    from .base import load_model

    folder = captioner_folder(spec)
    kind = model_type(folder)
    try:
        model, target, precision = load_model(folder, device, dtype)
        return adapter_class(kind)(folder, model, target, precision)
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise ModelLoadError(f"The captioning model in {folder} could not be loaded: {unreadable_reason(exc)}") \
            from None
