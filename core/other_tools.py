"""Generation settings in other tools' PNGs, as GenerationRequest field names.

  a1111      A1111, Forge, Fooocus's "a1111" scheme, ComfyUI savers that write it: the `parameters` text
  comfyui    ComfyUI's `prompt` graph (API format): the pass that makes the image is read
  invokeai   InvokeAI 3 and 4: `invokeai_metadata`
  swarmui    SwarmUI: `sui_image_params` JSON in `parameters`
  fooocus    Fooocus ("fooocus" scheme), RuinedFooocus and similar writers: other JSON in `parameters`

Each parser returns "source" and what it found; metadata.read_settings checks every value. A prompt that
begins with a Lumina system prompt (ComfyUI's Lumina 2 workflow writes it into the text) is split into the
system-prompt field, so it is not encoded twice.
"""

from __future__ import annotations

import json
import re

from .generation.prompts import SYSTEM_PROMPTS

PROMPT_START = "<Prompt Start>"

# ---- A1111 text ------------------------------------------------------------------------------------

_A1111_KEYS = {
    "steps": ("steps", int),
    "cfg scale": ("guidance", float),  # keys match in any case: "CFG Scale" too
    "seed": ("seed", int),
    "shift": ("shift", float),
    "cfg truncation": ("cfg_trunc", float),
    "cfg renorm": ("cfg_renorm", float),
    "system prompt": ("system_prompt", str),
    "compat": ("compat", str),
    "cache": ("cache", str),
    "model": ("model", str),
    "model hash": ("model_hash", str),
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


def _a1111_value(settings: dict, key: str, raw: str) -> None:
    value = json.loads(raw) if raw.startswith('"') and raw.endswith('"') and len(raw) > 1 else raw
    key = key.lower()
    if key == "size":
        width, height = str(value).split("x")
        settings["width"], settings["height"] = int(width), int(height)
    elif key == "sampler":
        settings["solver" if value in ("euler", "midpoint", "dpm") else "sampler"] = str(value)
    elif key in _A1111_KEYS:
        name, kind = _A1111_KEYS[key]
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


def parse_parameters(text: str) -> dict:
    """The `parameters` chunk: A1111 text, or JSON (SwarmUI, Fooocus, an embedded ComfyUI graph)."""
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            return _parse_json_parameters(data)
    return split_system_prompt(parse_a1111(text))


# ---- JSON in `parameters` ----------------------------------------------------------------------------

# Each field's names in the JSON writers, in the order they are looked for.
_JSON_NAMES = {
    "prompt": ("prompt", "Prompt", "positive_prompt"),
    "negative_prompt": ("negativeprompt", "negative_prompt", "Negative", "negative"),
    "seed": ("seed",),
    "steps": ("steps", "num_inference_steps"),
    "guidance": ("cfgscale", "cfg_scale", "guidance_scale", "cfg"),
    "width": ("width",),
    "height": ("height",),
    "shift": ("sigmashift",),
    "sampler": ("sampler", "sampler_name", "comfyuisampler"),
    "model": ("model", "base_model", "base_model_name"),
    "model_hash": ("base_model_hash",),
}
_NUMBERS = {"seed": int, "steps": int, "width": int, "height": int, "guidance": float, "shift": float}
_RESOLUTION = re.compile(r"\(?\s*(\d{1,6})\s*[,x*×]\s*(\d{1,6})\s*\)?")


def _parse_json_parameters(data: dict) -> dict:
    if isinstance(data.get("sui_image_params"), dict):
        return split_system_prompt(_named_fields(data["sui_image_params"], "swarmui"))
    if data and all(isinstance(node, dict) and "class_type" in node for node in data.values()):
        return parse_comfyui(data)
    settings = _named_fields(data, "fooocus")
    resolution = data.get("resolution")  # Fooocus: "(width, height)"
    if isinstance(resolution, str) and "width" not in settings and (match := _RESOLUTION.fullmatch(resolution)):
        settings["width"], settings["height"] = int(match[1]), int(match[2])
    return split_system_prompt(settings)


def _named_fields(data: dict, source: str) -> dict:
    """The fields `_JSON_NAMES` knows; numbers written as text ("seed": "1275...") become numbers."""
    settings = {"source": source}
    for field, names in _JSON_NAMES.items():
        name = next((n for n in names if n in data and data[n] is not None), None)
        if name is None:
            continue
        value = data[name]
        if field in _NUMBERS and isinstance(value, str):
            try:
                value = _NUMBERS[field](value.strip())
            except ValueError:
                raise ValueError(f"'{name}: {value[:40]}' is not a usable value") from None
        settings[field] = value
    return settings


# ---- InvokeAI ----------------------------------------------------------------------------------------

_INVOKEAI_NAMES = {"positive_prompt": "prompt", "negative_prompt": "negative_prompt", "seed": "seed",
                   "steps": "steps", "cfg_scale": "guidance", "width": "width", "height": "height",
                   "scheduler": "sampler"}


def parse_invokeai(data: dict) -> dict:
    settings = {"source": "invokeai"}
    for key, name in _INVOKEAI_NAMES.items():
        if key in data:
            settings[name] = data[key]
    if isinstance(data.get("model"), dict):  # InvokeAI 4 names it "name", 3.x "model_name"
        settings["model"] = data["model"].get("name") or data["model"].get("model_name")
    return split_system_prompt(settings)


# ---- ComfyUI -----------------------------------------------------------------------------------------

_SAMPLERS = {"KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced"}
_EMPTY_LATENTS = {"EmptyLatentImage", "EmptySD3LatentImage", "EmptyLatentImageAdvanced"}
_LOADERS = {"CheckpointLoaderSimple": "ckpt_name", "CheckpointLoader": "ckpt_name", "UNETLoader": "unet_name"}
_SHIFTS = {"ModelSamplingAuraFlow", "ModelSamplingSD3"}  # Lumina 2 graphs use AuraFlow's: the same shift as ours
# Inputs that are not the image being made: a walk back from a sampler's latent does not follow them.
_NOT_LATENT = {"model", "positive", "negative", "vae", "clip", "guider", "sampler", "sigmas", "noise",
               "conditioning", "control_net"}
_VALUE_INPUTS = ("value", "seed", "noise_seed", "int", "float", "number", "text", "string")  # primitive nodes
# ComfyUI's "CLIP Text Encode for Lumina2" names the authors' system prompts by a word of their own.
_COMFY_SYSTEM_PROMPTS = {"superior": SYSTEM_PROMPTS["real"], "alignment": SYSTEM_PROMPTS["align"]}
MAX_HOPS = 64  # links followed from one input: a longer chain (or a cycle) is not a real graph


class _Graph:
    """ComfyUI's API-format graph: {id: {"class_type", "inputs"}}; an input is a value or a link [id, output]."""

    def __init__(self, nodes: dict):
        self.nodes = nodes

    def linked(self, value) -> tuple[dict, int] | None:
        """The node a link points at and the output it takes; None for a plain value."""
        if isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int)):
            node = self.nodes.get(str(value[0]))
            if isinstance(node, dict):
                return node, value[1]
        return None

    def node(self, value) -> dict:
        hit = self.linked(value)
        return hit[0] if hit else {}

    @staticmethod
    def kind(node: dict) -> str | None:
        kind = node.get("class_type")
        return kind if isinstance(kind, str) else None

    @staticmethod
    def inputs(node: dict) -> dict:
        inputs = node.get("inputs")
        return inputs if isinstance(inputs, dict) else {}

    def walk(self, value, follow) -> list[dict]:
        """Nodes reached from a link through the inputs `follow(name)` allows, nearest first, each once."""
        start = self.node(value)
        found, seen = ([start], {id(start)}) if start else ([], set())
        for node in found:
            if len(found) > 10 * MAX_HOPS:  # each sampler's walk stays short, however many nodes a graph has
                break
            for name, link in self.inputs(node).items():
                target = self.node(link)
                if target and follow(name) and id(target) not in seen:
                    seen.add(id(target))
                    found.append(target)
        return found

    def value(self, value, hops: int = 0):
        """A plain input, or the value of the primitive node it is linked to."""
        hit = self.linked(value)
        if hit is None or hops > MAX_HOPS:
            return None if hit else value
        inputs = self.inputs(hit[0])
        name = next((n for n in _VALUE_INPUTS if n in inputs), None)
        return None if name is None else self.value(inputs[name], hops + 1)

    def text(self, value, hops: int = 0) -> str | None:
        """The prompt a conditioning input was encoded from, through ControlNet and conditioning nodes."""
        hit = self.linked(value)
        if hit is None or hops > MAX_HOPS:
            return None
        node, output = hit
        inputs = self.inputs(node)
        if self.kind(node) == "CLIPTextEncodeLumina2":
            user = self.value(inputs.get("user_prompt"))
            system = _COMFY_SYSTEM_PROMPTS.get(str(inputs.get("system_prompt")))
            if isinstance(user, str):
                return f"{system} {PROMPT_START} {user}" if system else user
            return None
        for name in ("text", "text_g", "string", "value"):
            found = self.value(inputs.get(name)) if name in inputs else None
            if isinstance(found, str):
                return found
        if "positive" in inputs:  # ControlNetApplyAdvanced and its kind: output 0 positive, 1 negative
            return self.text(inputs.get("negative" if output == 1 else "positive"), hops + 1)
        through = next((n for n in inputs if n.startswith("conditioning") or n == "cond"), None)
        return self.text(inputs[through], hops + 1) if through else None


def _node_order(item: tuple[str, object]):
    node_id = item[0]
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


def parse_comfyui(nodes: dict) -> dict:
    """The first sampling pass that adds noise (base, not refiner; first pass, not hires fix)."""
    graph = _Graph(nodes)
    samplers = [node for _, node in sorted(nodes.items(), key=_node_order)
                if isinstance(node, dict) and graph.kind(node) in _SAMPLERS]
    settings: dict = {"source": "comfyui"}
    if samplers:
        latents = {id(s): graph.walk(graph.inputs(s).get("latent_image"), lambda name: name not in _NOT_LATENT)
                   for s in samplers}
        first = [s for s in samplers if not any(graph.kind(n) in _SAMPLERS for n in latents[id(s)])]
        adds_noise = [s for s in first if graph.inputs(s).get("add_noise", "enable") not in ("disable", False)]
        chosen = (adds_noise or first or samplers)[0]
        settings.update(_comfy_pass(graph, chosen, latents[id(chosen)]))
        if len(samplers) > 1:
            settings["note"] = f"{len(samplers)} samplers: the first pass was read"
    if "model" not in settings:
        loader = next((n for n in nodes.values() if isinstance(n, dict) and graph.kind(n) in _LOADERS), None)
        if loader is not None:
            settings["model"] = graph.inputs(loader).get(_LOADERS[graph.kind(loader)])
    return split_system_prompt(settings)


def _comfy_pass(graph: _Graph, sampler: dict, latent: list[dict]) -> dict:
    inputs = graph.inputs(sampler)
    found: dict = {}
    if graph.kind(sampler) == "SamplerCustomAdvanced":  # noise, guider, sampler and sigmas are nodes
        noise = graph.inputs(graph.node(inputs.get("noise")))
        guider_node = graph.node(inputs.get("guider"))
        guider = graph.inputs(guider_node)
        seed = noise.get("noise_seed")
        cfg = 1.0 if graph.kind(guider_node) == "BasicGuider" else guider.get("cfg")
        positive, negative = guider.get("positive", guider.get("conditioning")), guider.get("negative")
        model = guider.get("model")
    else:
        seed = inputs.get("seed", inputs.get("noise_seed"))
        cfg, positive, negative, model = (inputs.get(k) for k in ("cfg", "positive", "negative", "model"))
    steps = inputs.get("steps", graph.inputs(graph.node(inputs.get("sigmas"))).get("steps"))
    sampler_name = inputs.get("sampler_name", graph.inputs(graph.node(inputs.get("sampler"))).get("sampler_name"))
    for name, value in (("seed", seed), ("guidance", cfg), ("steps", steps), ("sampler", sampler_name)):
        value = graph.value(value)
        if value is not None:
            found[name] = value
    for name, link in (("prompt", positive), ("negative_prompt", negative)):
        text = graph.text(link)
        if text is not None:
            found[name] = text
    empty = next((n for n in latent if graph.kind(n) in _EMPTY_LATENTS), None)
    if empty is not None:
        for key in ("width", "height"):
            value = graph.value(graph.inputs(empty).get(key))
            if value is not None:
                found[key] = value
    for node in graph.walk(model, lambda name: name == "model"):
        kind, node_inputs = graph.kind(node), graph.inputs(node)
        if kind in _SHIFTS and "shift" not in found:
            found["shift"] = graph.value(node_inputs.get("shift"))
        elif kind == "RenormCFG" and "cfg_renorm" not in found:
            found["cfg_renorm"] = graph.value(node_inputs.get("renorm_cfg"))
        elif kind in _LOADERS and "model" not in found:
            found["model"] = node_inputs.get(_LOADERS[kind])
    return found


# ---- the system prompt in the prompt -----------------------------------------------------------------


def split_system_prompt(settings: dict) -> dict:
    """"<system prompt> <Prompt Start> <prompt>" (or a known system prompt's text first) becomes the system
    prompt's name (or its own text) and the prompt alone; a negative prompt loses such a start too."""
    prompt = settings.get("prompt")
    if not isinstance(prompt, str):
        return settings
    system, marker, rest = prompt.partition(PROMPT_START)
    if not marker:
        system = next((text for text in SYSTEM_PROMPTS.values() if text and prompt.startswith(text)), None)
        if system is None:
            return settings
        rest = prompt[len(system):]
    system = system.strip()
    name = next((name for name, text in SYSTEM_PROMPTS.items() if text == system), None)
    if name is None and " " not in system:  # one word is no system prompt the request takes: leave the text
        return settings
    settings = {**settings, "prompt": rest.strip(), "system_prompt": name or system}
    negative = settings.get("negative_prompt")
    if isinstance(negative, str) and PROMPT_START in negative:
        settings["negative_prompt"] = negative.partition(PROMPT_START)[2].strip()
    note = f"the prompt began with {f'the {name!r}' if name else 'a'} system prompt: it is in System prompt now"
    settings["note"] = f"{settings['note']}; {note}" if settings.get("note") else note
    return settings
