"""Fit a model's own step-cache polynomial, the way TeaCache fitted Lumina-Image 2.0's.

Generate some images with every pass computed and record, pass by pass, the relative L1 change of the cache's
signal (the first joint block's modulated input) and of the pass's output (the velocity). A degree-4
polynomial from the first to the second is what the cache sums up: an estimate of how much the output has
moved since the joint blocks last ran. A small model's passes change differently from the 2.6B model's,
so the published coefficients can skip far too little (or too much) there.

Then the polynomial is scaled so that a threshold means about the same speed-up on every model: replaying the
recorded passes through the cache's own decision, threshold 0.3 skips the share of passes that the published
v1 set skips on Lumina-Image 2.0 there (1.5625x at 50 steps, TeaCache4Lumina2's figures: 36% fewer).
Without this a model whose outputs change little per step would skip up to the cap at every preset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cache import FITTED_FILE, CacheSettings, PassState, StepCache, relative_change

DEGREE = 4
CALIBRATION_THRESHOLD = 0.3
CALIBRATION_SKIPPED = 1 - 1 / 1.5625  # v1 at 0.3 on Lumina-Image 2.0: 1.5625x faster


@dataclass
class Recording:
    pairs: list[tuple[float, float]] = field(default_factory=list)  # (signal change, output change)
    # per image, its passes in order: (which, signal change since the previous pass, None where it must run)
    passes: list[list[tuple[str, float | None]]] = field(default_factory=list)


class ChangeRecorder(StepCache):
    """A cache that never skips and records, for each pass, the signal's change and the output's."""

    def __init__(self):
        super().__init__(CacheSettings(0.0, "v1"))
        self.pairs: list[tuple[float, float]] = []
        self.passes: list[tuple[str, float | None]] = []
        self._signal_change: dict[str, float | None] = {}
        self._last_output: dict = {}

    def should_compute(self, which, signal, step, steps) -> bool:
        state = self.states.setdefault(which, PassState())
        previous, state.previous_signal = state.previous_signal, signal
        change = None if previous is None else relative_change(signal, previous)
        self._signal_change[which] = change
        self.passes.append((which, None if step in (0, steps - 1) else change))
        self.computed += 1
        return True

    def observe(self, which, output) -> None:
        previous, self._last_output[which] = self._last_output.get(which), output
        change = self._signal_change.pop(which, None)
        if previous is not None and change is not None:
            self.pairs.append((change, relative_change(output, previous)))


def record_changes(engine, prompts: list[str], seed: int = 0, **settings) -> Recording:
    """The changes of every pass from generating one image per prompt with `engine`, nothing skipped."""
    from ..generation.request import GenerationRequest

    recording = Recording()
    for index, prompt in enumerate(prompts):
        recorder = ChangeRecorder()
        engine.generate(GenerationRequest(prompt, seed=seed + index, **settings), make_cache=lambda r=recorder: r)
        recording.pairs += recorder.pairs
        recording.passes.append(recorder.passes)
    return recording


def fit(pairs: list[tuple[float, float]]) -> list[float]:
    changes, outputs = np.array(pairs, dtype=np.float64).T
    return [float(c) for c in np.polyfit(changes, outputs, DEGREE)]


def skipped_share(recording: Recording, coefficients: list[float], threshold: float) -> float:
    """The share of the recorded passes the cache would skip with this polynomial and threshold."""
    skipped = total = 0
    for passes in recording.passes:
        cache = StepCache(CacheSettings(threshold), fitted=coefficients)
        for which, change in passes:
            cache.decide(which, change)
        skipped, total = skipped + cache.skipped, total + cache.skipped + cache.computed
    return skipped / max(1, total)


def calibrate(recording: Recording, coefficients: list[float]) -> float:
    """The factor for the polynomial that makes CALIBRATION_THRESHOLD skip CALIBRATION_SKIPPED of the passes.

    Scaling the polynomial by s is the same as dividing the threshold by s, so this looks for the smallest
    threshold that skips the target share (bisection in log space: the share only grows with the threshold).
    """
    low, high = 1e-6, 1e3
    if skipped_share(recording, coefficients, high) < CALIBRATION_SKIPPED:
        return CALIBRATION_THRESHOLD / high  # even the largest threshold skips less: skip as much as possible
    for _ in range(50):
        middle = (low * high) ** 0.5
        low, high = (middle, high) if skipped_share(recording, coefficients, middle) < CALIBRATION_SKIPPED \
            else (low, middle)
    return CALIBRATION_THRESHOLD / high


def fit_calibrated(recording: Recording) -> tuple[list[float], float]:
    """The fitted polynomial, scaled by `calibrate`, and the scale."""
    coefficients = fit(recording.pairs)
    scale = calibrate(recording, coefficients)
    return [c * scale for c in coefficients], scale


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
