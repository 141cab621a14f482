"""A generation request: every setting, its default, and validation with messages a person can act on.

Defaults follow the authors' demo (official) or diffusers' Lumina2Pipeline (compat diffusers):
  official:  1024x1024, midpoint, 18 steps, guidance 4.0, CFG truncation t < 0.25, renorm 1.0, shift 6
  diffusers: 1024x1024, euler,    30 steps, guidance 4.0, cfg_trunc_ratio 1.0, normalisation on, shift 6
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, fields, replace

from ..errors import RequestError
from .prompts import DEFAULT_SYSTEM_PROMPT, MAX_PROMPT_CHARS, system_prompt_text
from ..sampling.cache import CacheSettings

SOLVER_NAMES = ("euler", "midpoint", "dpm")
COMPAT_NAMES = ("official", "diffusers")
MAX_SEED = 2**64 - 1
PIXELS_PER_TOKEN = 16  # 8x VAE downsampling times patch size 2

DEFAULTS = {
    "official": {"solver": "midpoint", "steps": 18, "cfg_trunc": 0.25, "cfg_renorm": 1.0},
    "diffusers": {"solver": "euler", "steps": 30, "cfg_trunc": 1.0, "cfg_renorm": 1.0},
}


def default_settings(compat: str = "official", model_defaults: dict | None = None) -> dict:
    """steps, solver, cfg_trunc and cfg_renorm where a request leaves them unset."""
    return {**DEFAULTS[compat], **((model_defaults or {}) if compat == "official" else {})}


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    negative_prompt: str = ""
    system_prompt: str = DEFAULT_SYSTEM_PROMPT  # a name from prompts.SYSTEM_PROMPTS, or custom text
    width: int | None = None  # None: the model's own size (1024 for Lumina-Image 2.0, 64 for the demo)
    height: int | None = None
    steps: int | None = None
    guidance: float = 4.0
    cfg_trunc: float | None = None
    cfg_renorm: float | None = None
    solver: str | None = None
    shift: float | None = None  # None: the model's own (scheduler config), 6.0 for Lumina-Image 2.0
    seed: int | None = None  # None: random
    count: int = 1
    compat: str = "official"
    cache: str = "off"  # off, a threshold ("0.3"), or "v1:0.3" / "v2:0.5"

    def with_defaults(self, model_shift: float = 6.0, model_size: int = 1024,
                      model_defaults: dict | None = None) -> GenerationRequest:
        """Fill unset values from the model's and the compat mode's defaults; validates first.

        model_defaults (the model's sampling_defaults.json) replace the official ones; compat "diffusers"
        keeps diffusers' own, as its purpose is to match Lumina2Pipeline.
        """
        self.validate()
        defaults = default_settings(self.compat, model_defaults)
        return replace(
            self,
            width=self.width if self.width is not None else model_size,
            height=self.height if self.height is not None else model_size,
            steps=self.steps if self.steps is not None else defaults["steps"],
            solver=self.solver or defaults["solver"],
            cfg_trunc=self.cfg_trunc if self.cfg_trunc is not None else defaults["cfg_trunc"],
            cfg_renorm=self.cfg_renorm if self.cfg_renorm is not None else defaults["cfg_renorm"],
            shift=self.shift if self.shift is not None else model_shift,
        )

    @classmethod
    def from_values(cls, values: dict) -> GenerationRequest:
        """A request from any mapping that holds settings among other things (a form, parsed arguments)."""
        return cls(**{name: values[name] for name in request_fields() if name in values})

    @property
    def system_prompt_text(self) -> str:
        return system_prompt_text(self.system_prompt)

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        if not isinstance(self.prompt, str) or not isinstance(self.negative_prompt, str):
            raise RequestError("The prompt and negative prompt must be text.")
        for label, text in (("prompt", self.prompt), ("negative prompt", self.negative_prompt)):
            _check_encodable(label, text)
            if len(text) > MAX_PROMPT_CHARS:
                raise RequestError(
                    f"The {label} is {len(text):,} characters long; only its first 256 tokens (a few hundred "
                    f"words) can be used. Shorten it below {MAX_PROMPT_CHARS:,} characters."
                )
        if not isinstance(self.system_prompt, str):
            raise RequestError("The system prompt must be a name or text.")
        _check_encodable("system prompt", self.system_prompt)
        system_prompt_text(self.system_prompt)  # raises for an unknown name
        if self.compat not in COMPAT_NAMES:
            raise RequestError(f"Unknown compat mode '{self.compat}': use official or diffusers.")
        for label, value in (("width", self.width), ("height", self.height)):
            if value is None:
                continue
            if not _whole(value) or value < PIXELS_PER_TOKEN or value % PIXELS_PER_TOKEN:
                nearest = max(16, round(value / 16) * 16) if _finite(value) else 1024
                raise RequestError(
                    f"The {label} must be a positive multiple of 16 pixels (one model token is 16x16 px); "
                    f"got {value}. Nearest valid: {nearest}."
                )
        if self.steps is not None and (not _whole(self.steps) or not 1 <= self.steps <= 1000):
            raise RequestError(f"Steps must be a whole number from 1 to 1000; got {self.steps}.")
        if not _finite(self.guidance) or self.guidance < 0:
            raise RequestError(f"Guidance must be 0 or more (1 turns guidance off); got {self.guidance}.")
        if self.cfg_trunc is not None and (not _finite(self.cfg_trunc) or self.cfg_trunc < 0):
            raise RequestError(f"CFG truncation must be 0 or more; got {self.cfg_trunc}.")
        if self.cfg_renorm is not None and (not _finite(self.cfg_renorm) or self.cfg_renorm < 0):
            raise RequestError(f"CFG renormalisation must be 0 (off) or more; got {self.cfg_renorm}.")
        if self.solver is not None and self.solver not in SOLVER_NAMES:
            raise RequestError(f"Unknown solver '{self.solver}': use {', '.join(SOLVER_NAMES)}.")
        if self.shift is not None and (not _finite(self.shift) or self.shift <= 0):
            raise RequestError(f"Time shift must be above 0 (6 is the model's default); got {self.shift}.")
        CacheSettings.parse(self.cache)  # raises with the accepted forms
        if not _whole(self.count) or not 1 <= self.count <= 1000:
            raise RequestError(f"Count must be a whole number from 1 to 1000; got {self.count}.")
        if self.seed is not None and (not _whole(self.seed) or not 0 <= self.seed <= MAX_SEED - self.count + 1):
            raise RequestError(f"Seed must be a whole number from 0 to {MAX_SEED - self.count + 1}; got {self.seed}.")


@functools.cache
def request_fields() -> tuple[str, ...]:
    """The request's setting names, in order: the one list every form, parser and table derives from."""
    return tuple(f.name for f in fields(GenerationRequest))


FIELD_LABELS = {
    "prompt": "Prompt", "negative_prompt": "Negative prompt", "system_prompt": "System prompt", "width": "Width",
    "height": "Height", "steps": "Steps", "guidance": "Guidance", "cfg_trunc": "CFG truncation",
    "cfg_renorm": "CFG renorm", "solver": "Solver", "shift": "Time shift", "seed": "Seed", "count": "Images",
    "compat": "Compat", "cache": "Step cache",
}


def check_field(name: str, value) -> None:
    """One setting checked by the request's own rules, alone; RequestError names the field."""
    if isinstance(value, bool) or isinstance(value, (dict, list)):
        raise RequestError(f"the setting '{name}' has an unusable value ({str(value)[:40]!r}).")
    probe = GenerationRequest(prompt=value) if name == "prompt" else GenerationRequest(prompt="", **{name: value})
    try:
        probe.validate()
    except RequestError as exc:
        raise RequestError(f"the setting '{name}' is unusable: {exc}") from None


def _check_encodable(label: str, text: str) -> None:
    """Text from a command line in another encoding arrives with lone surrogates that no tokenizer takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(
            f"The {label} contains bytes that are not UTF-8 text (at character {exc.start + 1}). Retype it, "
            "or set your terminal to UTF-8."
        ) from None


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
