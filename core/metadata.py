"""PNG files with their generation settings, written atomically, and read back.

Each image carries an A1111-style `parameters` text chunk (read by most tools) and a `lumina_studio` JSON
chunk with every setting. The reader also understands other tools' images (core/other_tools.py).
Text chunks are parsed with Pillow (Qt's reader collapses their newlines).
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from .errors import MetadataError, OutputError, RequestError
from .images import open_image
from .other_tools import parse_comfyui, parse_invokeai, parse_parameters
from .storage import write_atomic

JSON_KEY = "lumina_studio"
FORMAT = "lumina-studio/1"


# ---- writing -------------------------------------------------------------------------------------


def a1111_parameters(settings: dict, model: dict) -> str:
    """The A1111 `parameters` text: prompt, negative prompt, then one line of `Key: value` pairs."""
    pairs = [
        ("Steps", settings["steps"]),
        ("Sampler", settings["solver"]),
        ("CFG scale", settings["guidance"]),
        ("Seed", settings["seed"]),
        ("Size", f"{settings['width']}x{settings['height']}"),
        ("Model hash", model.get("hash", "")[:10]),
        ("Model", model.get("name", "")),
        ("Shift", settings["shift"]),
        ("CFG truncation", settings["cfg_trunc"]),
        ("CFG renorm", settings["cfg_renorm"]),
        ("System prompt", settings["system_prompt"]),
        ("Compat", settings["compat"]),
        ("Cache", settings.get("cache", "off")),
    ]
    line = ", ".join(f"{key}: {_quote(value)}" for key, value in pairs)
    text = settings["prompt"]
    if settings.get("negative_prompt"):
        text += f"\nNegative prompt: {settings['negative_prompt']}"
    return f"{text}\n{line}"


def _quote(value) -> str:
    text = str(value)
    return json.dumps(text) if any(ch in text for ch in ',:"\n') else text


def png_info(parameters: str, record: dict) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    try:
        parameters.encode("latin-1")
        info.add_text("parameters", parameters)
    except UnicodeEncodeError:  # tEXt is Latin-1 only; iTXt carries UTF-8
        info.add_itxt("parameters", parameters)
    info.add_itxt(JSON_KEY, json.dumps(record, ensure_ascii=False))
    return info


def check_writable(folder: Path) -> None:
    """Fail early (before minutes of sampling) when images cannot be saved in `folder`."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise OutputError(f"Cannot write images to {folder}: {exc.strerror or exc}. Choose another folder with --out.") from None


def write_png(image: Image.Image, folder: Path, stem: str, info: PngImagePlugin.PngInfo) -> Path:
    """Write `stem.png` (or `stem-2.png`, ... if taken) atomically, never overwriting another image."""
    try:
        return write_atomic(folder / f"{stem}.png", lambda handle: image.save(handle, format="PNG", pnginfo=info),
                            place=_claim_name)
    except OSError as exc:
        reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise OutputError(f"Could not save the image in {folder}: {reason}. Nothing was overwritten.") from None


def _claim_name(temp: Path, wanted: Path) -> Path:
    folder, stem = wanted.parent, wanted.stem
    for n in range(1, 10_000):
        target = folder / (f"{stem}.png" if n == 1 else f"{stem}-{n}.png")
        try:
            os.link(temp, target)  # fails if the name exists: never overwrites
            return target
        except FileExistsError:
            continue
        except OSError:  # file systems without hard links
            if not target.exists():
                os.replace(temp, target)
                return target
    raise OutputError(f"Could not find a free file name for {stem}.png in {folder}.")


# ---- reading -------------------------------------------------------------------------------------


MAX_TEXT_BYTES = 1 << 20  # a settings chunk larger than this is not read (Pillow's own limit for one chunk)
_SETTINGS_KEYS = (JSON_KEY, "parameters", "invokeai_metadata", "prompt")


def read_png_text(path: Path) -> dict[str, str]:
    """The PNG's text chunks. Pixels are decoded only when no settings chunk precedes them."""
    try:
        with open_image(path) as image:
            text = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)}
            if not any(key in text for key in _SETTINGS_KEYS):  # chunks may also follow the pixels
                image.load()
                text = {k: v for k, v in getattr(image, "text", {}).items() if isinstance(v, str)}
            return {key: _utf8_read_as_latin1(value) for key, value in text.items()}
    except FileNotFoundError:
        raise MetadataError(f"{path} does not exist.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # ValueError: a text chunk that decompresses beyond Pillow's limits
        raise MetadataError(f"{path} is not a readable image ({exc}).") from None


def _utf8_read_as_latin1(text: str) -> str:
    """Undo the mojibake of writers that put UTF-8 into a Latin-1 tEXt chunk (Stability Matrix): `#テスト`
    comes back. Text that is not such bytes (true Latin-1, iTXt's UTF-8 beyond U+00FF) is kept as it is."""
    try:
        return text.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return text


def read_settings(path: str | Path) -> dict:
    """Generation settings stored in an image, as GenerationRequest field names where they map.

    Always has "source" (lumina-studio, or one of other_tools: a1111, comfyui, invokeai, swarmui, fooocus);
    other keys only when found. Every value has passed the request's own checks, so it can go straight into a
    form. Raises only MetadataError.
    """
    path = Path(path)
    text = read_png_text(path)
    key = next((k for k in _SETTINGS_KEYS if k in text), None)
    if key is None:
        raise MetadataError(f"{path} holds no generation settings (no parameters, ComfyUI or InvokeAI data).")
    if len(text[key]) > MAX_TEXT_BYTES:
        raise MetadataError(f"{path}: its '{key}' text is {len(text[key]):,} characters long, more than the "
                            f"{MAX_TEXT_BYTES:,} read for settings.")
    try:
        if key == JSON_KEY:
            record = _json_object(text[key])
            settings = _json_object_of(record.get("settings"))
            model = record.get("model")
            model = model if isinstance(model, dict) else {}
            settings = {**settings, "source": "lumina-studio", "model": model.get("name"),
                        "model_hash": model.get("hash") or None}
        elif key == "parameters":
            settings = parse_parameters(text[key])
        elif key == "invokeai_metadata":
            settings = parse_invokeai(_json_object(text[key]))
        else:
            settings = parse_comfyui(_json_object(text[key]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as exc:
        raise MetadataError(f"{path} has generation settings that could not be parsed ({type(exc).__name__}: "
                            f"{str(exc)[:200]}).") from None
    if not set(settings) - {"source", "note"}:
        raise MetadataError(f"{path}: its {settings['source']} data holds no setting this app can use "
                            f"(no prompt, seed, steps or size was found).")
    try:
        return checked_settings(nearest_valid_size(settings))
    except RequestError as exc:
        raise MetadataError(f"{path}: {exc}") from None


def nearest_valid_size(settings: dict) -> dict:
    """A size that is not a multiple of 16 (1368x768 from SD 1.5) becomes the nearest that is, with a note
    saying so, so the prompt, seed and the rest still load."""
    size = [settings.get("width"), settings.get("height")]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size if v is not None):
        return settings  # the request's own check names what is wrong
    nearest = [max(16, round(v / 16) * 16) if v is not None else None for v in size]
    if nearest == size:
        return settings
    old, new = ("x".join(str(v) for v in values if v is not None) for values in (size, nearest))
    note = f"its size {old} is not a multiple of 16 pixels: the nearest that is, {new}, is proposed"
    return {**settings, "width": nearest[0], "height": nearest[1],
            "note": f"{settings['note']}; {note}" if settings.get("note") else note}


def _json_object(text: str) -> dict:
    return _json_object_of(json.loads(text))


def _json_object_of(value) -> dict:
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON object, found {type(value).__name__}")
    return value


_TEXT_KEYS = ("source", "sampler", "model", "model_hash", "system_prompt_text", "note")


def checked_settings(settings: dict) -> dict:
    """Only the keys we know, each checked by GenerationRequest's own rules; raises RequestError naming the
    field. Text-only keys (sampler, model, ...) must be text; anything else is dropped."""
    from .generation.request import check_field, request_fields

    checked = {}
    for key, value in settings.items():
        if key in request_fields():
            check_field(key, value)
        elif key in _TEXT_KEYS:
            if value is not None and not isinstance(value, str):
                raise RequestError(f"the setting '{key}' must be text, not {type(value).__name__}.")
        else:
            continue
        checked[key] = value
    return checked
