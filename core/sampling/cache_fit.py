"""Fit a model's own step-cache polynomial, the way TeaCache fitted Lumina-Image 2.0's.

Generate some images with every pass computed and record, pass by pass, the relative L1 change of the cache's
signal (the first joint block's modulated input) and of the pass's output (the velocity). A degree-4
polynomial from the first to the second is what the cache sums up: an estimate of how much the output has
moved since the joint blocks last ran. A small model's passes change differently from the 2.6B model's,
so the published coefficients can skip far too little (or too much) there.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .cache import FITTED_FILE, CacheSettings, PassState, StepCache, relative_change

DEGREE = 4


class ChangeRecorder(StepCache):
    """A cache that never skips and records (signal change, output change) for each pass after the first."""

    def __init__(self):
        super().__init__(CacheSettings(0.0, "v1"))
        self.pairs: list[tuple[float, float]] = []
        self._signal_change: dict[str, float | None] = {}
        self._last_output: dict = {}

    def should_compute(self, which, signal, step, steps) -> bool:
        state = self.states.setdefault(which, PassState())
        previous, state.previous_signal = state.previous_signal, signal
        self._signal_change[which] = None if previous is None else relative_change(signal, previous)
        self.computed += 1
        return True

    def observe(self, which, output) -> None:
        previous, self._last_output[which] = self._last_output.get(which), output
        change = self._signal_change.pop(which, None)
        if previous is not None and change is not None:
            self.pairs.append((change, relative_change(output, previous)))


def record_changes(engine, prompts: list[str], seed: int = 0, **settings) -> list[tuple[float, float]]:
    """(signal change, output change) pairs from generating one image per prompt with `engine`."""
    from ..request import GenerationRequest

    pairs = []
    for index, prompt in enumerate(prompts):
        recorder = ChangeRecorder()
        engine.generate(GenerationRequest(prompt, seed=seed + index, **settings), make_cache=lambda r=recorder: r)
        pairs += recorder.pairs
    return pairs


def fit(pairs: list[tuple[float, float]]) -> list[float]:
    changes, outputs = np.array(pairs, dtype=np.float64).T
    return [float(c) for c in np.polyfit(changes, outputs, DEGREE)]


def write_fitted(transformer_folder: Path, coefficients: list[float], note: str) -> Path:
    from ..storage import write_text_atomic

    path = Path(transformer_folder) / FITTED_FILE
    write_text_atomic(path, json.dumps({"coefficients": coefficients, "fitted_on": note}, indent=2) + "\n")
    return path


def read_fitted(transformer_folder: Path) -> list[float] | None:
    """The model's own polynomial, or None when it has none."""
    from ..errors import ModelLoadError

    path = Path(transformer_folder) / FITTED_FILE
    if not path.is_file():
        return None
    try:
        coefficients = [float(c) for c in json.loads(path.read_text())["coefficients"]]
        if len(coefficients) != DEGREE + 1 or not np.all(np.isfinite(coefficients)):
            raise ValueError(f"{DEGREE + 1} finite numbers expected")
    except (ValueError, KeyError, TypeError) as error:
        raise ModelLoadError(f"{path} is not a usable step-cache polynomial ({error}); delete it to use the "
                             "published coefficients.") from error
    return coefficients
