"""PNG files with their generation settings, written atomically, and read back.

Each image carries an A1111-style `parameters` text chunk (read by most tools) and a `lumina_studio` JSON
chunk with every setting. The reader also understands A1111, ComfyUI and InvokeAI images where it can.
Text chunks are parsed with Pillow (Qt's reader collapses their newlines).
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from pathlib import Path

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from .errors import MetadataError, OutputError, RequestError
from .images import open_image
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
            return text
    except FileNotFoundError:
        raise MetadataError(f"{path} does not exist.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # ValueError: a text chunk that decompresses beyond Pillow's limits
        raise MetadataError(f"{path} is not a readable image ({exc}).") from None


def read_settings(path: str | Path) -> dict:
    """Generation settings stored in an image, as GenerationRequest field names where they map.

    Always has "source" (lumina-studio, a1111, comfyui, invokeai); other keys only when found. Every value
    has passed the request's own checks, so it can go straight into a form. Raises only MetadataError.
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
            settings = parse_a1111(text[key])
        elif key == "invokeai_metadata":
            settings = _parse_invokeai(_json_object(text[key]))
        else:
            settings = _parse_comfyui(_json_object(text[key]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as exc:
        raise MetadataError(f"{path} has generation settings that could not be parsed ({type(exc).__name__}: "
                            f"{str(exc)[:200]}).") from None
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
    return {**settings, "width": nearest[0], "height": nearest[1],
            "note": f"its size {old} is not a multiple of 16 pixels: the nearest that is, {new}, is proposed"}


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
    from .request import check_field, request_fields

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


_A1111_KEYS = {
    "Steps": ("steps", int),
    "CFG scale": ("guidance", float),
    "Seed": ("seed", int),
    "Shift": ("shift", float),
    "CFG truncation": ("cfg_trunc", float),
    "CFG renorm": ("cfg_renorm", float),
    "System prompt": ("system_prompt", str),
    "Compat": ("compat", str),
    "Cache": ("cache", str),
    "Model": ("model", str),
    "Model hash": ("model_hash", str),
}
_A1111_KEY = re.compile(r"\w[\w \-/]*")
# Every alternative consumes at least one character and never backtracks: tokenising is linear.
_A1111_TOKEN = re.compile(r'\\.|"|,|:|[^\\",:]+|\\')


def _a1111_pairs(line: str) -> list[tuple[str, str]] | None:
    """`Key: value, Key: "quoted, value"` -> [(key, raw value)] in one pass; None when not such a line."""
    fields, current, quoted = [], [], False
    for token in _A1111_TOKEN.findall(line):
        if token == '"':
            quoted = not quoted
        elif token == "," and not quoted:
            fields.append("".join(current))
            current = []
            continue
        current.append(token)
    fields.append("".join(current))
    pairs = []
    for field_text in fields:
        key, colon, value = field_text.partition(":")
        key = key.strip()
        if not colon or not _A1111_KEY.fullmatch(key):
            return None
        pairs.append((key, value.strip()))
    return pairs


_A1111_KEYS_ANY_CASE = {key.lower(): target for key, target in _A1111_KEYS.items()}  # "CFG Scale" too


def _a1111_value(settings: dict, key: str, raw: str) -> None:
    value = json.loads(raw) if raw.startswith('"') and raw.endswith('"') and len(raw) > 1 else raw
    key = key.lower()
    if key == "size":
        width, height = str(value).split("x")
        settings["width"], settings["height"] = int(width), int(height)
    elif key == "sampler":
        settings["solver" if value in ("euler", "midpoint", "dpm") else "sampler"] = str(value)
    elif key in _A1111_KEYS_ANY_CASE:
        name, kind = _A1111_KEYS_ANY_CASE[key]
        settings[name] = kind(value)


def parse_a1111(text: str) -> dict:
    lines = text.strip().split("\n")
    settings: dict = {"source": "a1111"}
    pairs = _a1111_pairs(lines[-1]) if lines and "Steps:" in lines[-1] else None
    if pairs is not None:
        lines.pop()
        for key, raw in pairs:
            try:
                _a1111_value(settings, key, raw)
            except ValueError:
                raise ValueError(f"'{key}: {raw[:40]}' is not a usable value") from None
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    settings["prompt"] = "\n".join(prompt)
    settings["negative_prompt"] = "\n".join(negative)
    return settings


def _parse_invokeai(data: dict) -> dict:
    settings = {"source": "invokeai"}
    names = {
        "positive_prompt": "prompt",
        "negative_prompt": "negative_prompt",
        "seed": "seed",
        "steps": "steps",
        "cfg_scale": "guidance",
        "width": "width",
        "height": "height",
        "scheduler": "sampler",
    }
    for key, name in names.items():
        if key in data:
            settings[name] = data[key]
    if isinstance(data.get("model"), dict):  # InvokeAI 4 names it "name", 3.x "model_name"
        settings["model"] = data["model"].get("name") or data["model"].get("model_name")
    return settings


_COMFY_SAMPLERS = {"KSampler", "KSamplerAdvanced", "SamplerCustom"}
_COMFY_LATENTS = {"EmptyLatentImage", "EmptySD3LatentImage", "EmptyLatentImageAdvanced"}


def _parse_comfyui(graph: dict) -> dict:
    settings: dict = {"source": "comfyui"}

    def text_of(link) -> str | None:
        if not (isinstance(link, list) and str(link[0]) in graph):
            return None
        inputs = graph[str(link[0])].get("inputs", {})
        value = inputs.get("text", inputs.get("text_g"))
        if isinstance(value, list):
            return text_of(value)
        if value is None and "conditioning" in inputs:
            return text_of(inputs["conditioning"])
        return value

    for node in graph.values():
        kind, inputs = node.get("class_type"), node.get("inputs", {})
        if kind in _COMFY_SAMPLERS:
            seed = inputs.get("seed", inputs.get("noise_seed"))
            for key, name in (("steps", "steps"), ("cfg", "guidance"), ("sampler_name", "sampler")):
                if not isinstance(inputs.get(key), list) and key in inputs:
                    settings[name] = inputs[key]
            if isinstance(seed, int):
                settings["seed"] = seed
            for key, name in (("positive", "prompt"), ("negative", "negative_prompt")):
                found = text_of(inputs.get(key))
                if found is not None:
                    settings[name] = found
        elif kind in _COMFY_LATENTS:
            for key in ("width", "height"):
                if isinstance(inputs.get(key), int):
                    settings[key] = inputs[key]
        elif kind in ("CheckpointLoaderSimple", "UNETLoader"):
            settings["model"] = inputs.get("ckpt_name") or inputs.get("unet_name")
    return settings
