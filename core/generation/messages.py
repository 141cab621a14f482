"""What the app and the generation service say to each other: the jobs, the query and its answer, and each
message a job sends back. Frozen, picklable, no torch: the app imports this module, and tells messages apart
by their type."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GenerateImages:
    """A job: `request` holds GenerationRequest's fields; images go to `out_dir`."""
    request: dict
    out_dir: str
    model_path: bool = False  # store the model's file path in the images too


@dataclass(frozen=True)
class MeasureBackends:
    """A job: time both backends for `--backend auto` and remember the faster (answered by BackendChoice)."""


@dataclass(frozen=True)
class CountTokens:
    """A query, answered while a job runs (prompts.TokenCount): the prompt's length in tokens with its system
    prompt."""
    prompt: str
    system_prompt: str


@dataclass(frozen=True)
class ImageProgress:
    """Step `step` of `total` of image `image` (0-based) of `count`."""
    image: int
    count: int
    step: int
    total: int
    eta: float  # seconds left in this image


@dataclass(frozen=True)
class Preview:
    image: int
    width: int
    height: int
    rgb: bytes  # width x height x 3


@dataclass(frozen=True)
class ImageSaved:
    image: int
    path: str
    settings: dict
    evaluations: int  # transformer passes


@dataclass(frozen=True)
class BackendChoice:
    backend: str  # "torch" or "onnx": the faster, as Engine.measure_backends found and remembered
