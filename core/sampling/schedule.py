"""Time grids. Convention throughout: t = 0 is pure noise, t = 1 is the image (the authors' one)."""

from __future__ import annotations

import numpy as np


def shift_time(t: np.ndarray, shift: float) -> np.ndarray:
    """Spend more steps near the noise end: t' = t / (s - (s - 1) t)."""
    return t / (shift - (shift - 1.0) * t)


def official_grid(steps: int, shift: float) -> list[float]:
    """The authors' grid: evenly spaced t from 0 to 1, then shifted. `steps` intervals, steps + 1 points.

    (The authors' scripts count grid points: their "18 steps" are 17 intervals.)
    """
    return [float(t) for t in shift_time(np.linspace(0.0, 1.0, steps + 1), shift)]


def diffusers_grid(steps: int, shift: float) -> list[float]:
    """diffusers' Lumina2Pipeline grid, with its float32 arithmetic:
    sigmas = linspace(1, 1/N, N), shifted as s*sigma / (1 + (s - 1) sigma), then 0 appended; t = 1 - sigma.
    """
    sigmas = np.linspace(1.0, 1.0 / steps, steps).astype(np.float32)
    sigmas = (np.float32(shift) * sigmas / (np.float32(1.0) + np.float32(shift - 1.0) * sigmas)).astype(np.float32)
    sigmas = np.append(sigmas, np.float32(0.0))
    return [float(np.float32(1.0) - s) for s in sigmas]
