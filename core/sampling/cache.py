"""Cached sampling, TeaCache-style: skip the joint blocks while their input barely changes.

Per pass (conditional, unconditional) and per generation: the relative L1 change of the first joint
block's modulated input is rescaled by a polynomial fitted for Lumina-Image 2.0 (TeaCache4Lumina2,
coefficient sets v1 and v2) and accumulated. While the sum stays under the threshold the joint blocks
are skipped and their last residual (output - input) is reused; otherwise they run and the sum resets.
The first and the last step always run. Threshold 0 never skips.

A model may carry its own polynomial, fitted the TeaCache way on its own sampling and scaled so thresholds
mean about the published speed-ups (`cache_fit.py`), in transformer/step_cache.json; a bare threshold then
uses it ("auto"), and v1:/v2: still pick the published sets.

One addition of ours: never more than MAX_SKIPS_IN_A_ROW skips in a row. Outside the range a polynomial
was fitted on it can turn negative (v2 does for changes below ~1.5%), and the sum would then never reach
the threshold again, freezing the image; the cap makes that impossible and rarely binds otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..errors import RequestError

if TYPE_CHECKING:  # torch stays out of the app process, which imports this module for the settings
    import torch

COEFFICIENTS = {
    "v1": [393.76566581, -603.50993606, 209.10239044, -23.00726601, 0.86377344],
    "v2": [225.7042019806413, -608.8453716535591, 304.1869942338369, 124.21267720116742, -1.4089066892956552],
}
FITTED_FILE = "step_cache.json"  # in a diffusers folder's transformer/: {"coefficients": [...], ...}
APP_PRESETS = ("off", "0.2", "0.3", "0.5")
MAX_SKIPS_IN_A_ROW = 6


def relative_change(new: torch.Tensor, old: torch.Tensor) -> float:
    """Relative L1 change, TeaCache's measure."""
    return ((new - old).abs().mean() / old.abs().mean()).item()


@dataclass(frozen=True)
class CacheSettings:
    threshold: float
    coefficients: str = "auto"  # the model's own fitted polynomial if it has one, else v1

    @classmethod
    def parse(cls, text: str | None) -> CacheSettings | None:
        """'off' -> None; '0.3' -> auto at 0.3; 'v2:0.5' -> v2 at 0.5."""
        if text is None or str(text).strip().lower() in ("", "off"):
            return None
        version, _, value = str(text).strip().rpartition(":")
        version = version or "auto"
        try:
            threshold = float(value)
        except ValueError:
            threshold = -1.0
        if version not in (*COEFFICIENTS, "auto") or not np.isfinite(threshold) or threshold < 0:
            raise RequestError(
                f"Cache setting '{text}' is not understood: use off, a threshold such as 0.3 (0.2-0.5 are "
                "typical), or v1:THRESHOLD / v2:THRESHOLD to pick the coefficient set."
            )
        return cls(threshold, version)

    def __str__(self) -> str:
        return f"{self.threshold:g}" if self.coefficients == "auto" else f"{self.coefficients}:{self.threshold:g}"


@dataclass
class PassState:
    previous_signal: torch.Tensor | None = None
    accumulated: float = 0.0
    residual: torch.Tensor | None = None
    skips_in_a_row: int = 0


@dataclass
class StepCache:
    """The cache of one generation (create a new one per image: nothing leaks between generations)."""

    settings: CacheSettings
    fitted: list[float] | None = None  # the model's own polynomial, if it has one
    states: dict[str, PassState] = field(default_factory=dict)
    computed: int = 0
    skipped: int = 0

    def __post_init__(self):
        name = self.settings.coefficients
        if name == "auto":
            name = "model" if self.fitted else "v1"
        self.coefficients_used = name
        self.rescale = np.poly1d(self.fitted if name == "model" else COEFFICIENTS[name])

    def should_compute(self, which: str, signal: torch.Tensor, step: int, steps: int) -> bool:
        state = self.states.setdefault(which, PassState())
        previous, state.previous_signal = state.previous_signal, signal
        edge = step == 0 or step == steps - 1
        must = edge or previous is None or state.residual is None or self.settings.threshold <= 0
        # One host sync per pass: the decision is a Python branch.
        return self.decide(which, None if must else relative_change(signal, previous))

    def decide(self, which: str, change: float | None) -> bool:
        """Compute this pass? `change` is the signal's relative change since the previous pass, None where
        the pass must run (an edge step, nothing cached yet, threshold 0)."""
        state = self.states.setdefault(which, PassState())
        if change is None:
            compute = True
        else:
            state.accumulated += float(self.rescale(change))
            compute = state.accumulated >= self.settings.threshold or state.skips_in_a_row >= MAX_SKIPS_IN_A_ROW
        if compute:
            state.accumulated = 0.0
            state.skips_in_a_row = 0
            self.computed += 1
        else:
            state.skips_in_a_row += 1
            self.skipped += 1
        return compute

    def observe(self, which: str, output: torch.Tensor) -> None:
        """The pass's output (velocity); used only when fitting a polynomial (cache_fit.ChangeRecorder)."""

    def remember(self, which: str, residual: torch.Tensor) -> None:
        self.states[which].residual = residual

    def residual(self, which: str) -> torch.Tensor:
        return self.states[which].residual
