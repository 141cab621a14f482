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

from .errors import MetadataError, OutputError

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
    """Write `stem.png` (or `stem-2.png`, ... if taken) atomically: temp file, fsync, then link into place."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=folder, prefix=f".{stem}-", suffix=".png.tmp")
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            image.save(handle, format="PNG", pnginfo=info)
            handle.flush()
            os.fsync(handle.fileno())
        return _claim_name(temp, folder, stem)
    except OSError as exc:
        reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise OutputError(f"Could not save the image in {folder}: {reason}. Nothing was overwritten.") from None
    finally:
        temp.unlink(missing_ok=True)


def _claim_name(temp: Path, folder: Path, stem: str) -> Path:
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


def read_png_text(path: Path) -> dict[str, str]:
    try:
        with Image.open(path) as image:
            image.load()
            return {k: v for k, v in getattr(image, "text", {}).items() if isinstance(v, str)}
    except FileNotFoundError:
        raise MetadataError(f"{path} does not exist.") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise MetadataError(f"{path} is not a readable image ({exc}).") from None


def read_settings(path: str | Path) -> dict:
    """Generation settings stored in an image, as GenerationRequest field names where they map.

    Always has "source" (lumina-studio, a1111, comfyui, invokeai); other keys only when found.
    """
    path = Path(path)
    text = read_png_text(path)
    try:
        if JSON_KEY in text:
            record = json.loads(text[JSON_KEY])
            return {"source": "lumina-studio", **record["settings"], "model": record.get("model", {}).get("name")}
        if "parameters" in text:
            return parse_a1111(text["parameters"])
        if "invokeai_metadata" in text:
            return _parse_invokeai(json.loads(text["invokeai_metadata"]))
        if "prompt" in text:
            return _parse_comfyui(json.loads(text["prompt"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise MetadataError(f"{path} has generation settings that could not be parsed ({exc}).") from None
    raise MetadataError(f"{path} holds no generation settings (no parameters, ComfyUI or InvokeAI data).")


_A1111_PAIR = re.compile(r'\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
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


def parse_a1111(text: str) -> dict:
    lines = text.strip().split("\n")
    settings: dict = {"source": "a1111"}
    if lines and _A1111_PAIR.match(lines[-1]) and "Steps:" in lines[-1]:
        for key, raw in _A1111_PAIR.findall(lines.pop()):
            value = json.loads(raw) if raw.startswith('"') else raw.strip()
            if key == "Size":
                width, height = value.split("x")
                settings["width"], settings["height"] = int(width), int(height)
            elif key == "Sampler":
                settings["solver" if value in ("euler", "midpoint", "dpm") else "sampler"] = value
            elif key in _A1111_KEYS:
                name, kind = _A1111_KEYS[key]
                settings[name] = kind(value)
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
    if isinstance(data.get("model"), dict):
        settings["model"] = data["model"].get("name")
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
