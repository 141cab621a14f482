"""ODE solvers for dx/dt = v(x, t), integrating from noise (t = 0) towards the image (t = 1).

Each `step` returns the new latent and the velocity at the step's start (for x0 previews).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

Velocity = Callable[[torch.Tensor, float], torch.Tensor]


class Euler:
    name = "euler"
    evaluations_per_step = 1

    def step(self, f: Velocity, x, t0: float, t1: float):
        v0 = f(x, t0)
        return x + (t1 - t0) * v0, v0


class Midpoint:
    """Explicit midpoint (second order), as torchdiffeq's fixed-grid 'midpoint' used by the authors."""

    name = "midpoint"
    evaluations_per_step = 2

    def step(self, f: Velocity, x, t0: float, t1: float):
        dt = t1 - t0
        v0 = f(x, t0)
        v_mid = f(x + 0.5 * dt * v0, t0 + 0.5 * dt)
        return x + dt * v_mid, v0


class FlowDPMSolver2M:
    """DPM-Solver++ (2M, data prediction) for the flow path x_t = t x_data + (1 - t) noise.

    alpha_t = t, sigma_t = 1 - t, lambda = log(t / (1 - t)). One evaluation per step; second order from the
    step after the first finite lambda; the last step (sigma = 0) returns the data prediction.
    """

    name = "dpm"
    evaluations_per_step = 1

    def __init__(self):
        self.previous: tuple[torch.Tensor, float] | None = None  # (x0 prediction, lambda) of the last step

    @staticmethod
    def _lambda(t: float) -> float:
        if t <= 0.0:
            return -math.inf
        if t >= 1.0:
            return math.inf
        return math.log(t / (1.0 - t))

    def step(self, f: Velocity, x, t0: float, t1: float):
        v0 = f(x, t0)
        x0 = x + (1.0 - t0) * v0
        lam0, lam1 = self._lambda(t0), self._lambda(t1)
        data = x0
        if self.previous is not None and math.isfinite(self.previous[1]) and math.isfinite(lam1):
            prev_x0, prev_lam = self.previous
            r = (lam0 - prev_lam) / (lam1 - lam0)
            data = (1.0 + 1.0 / (2.0 * r)) * x0 - (1.0 / (2.0 * r)) * prev_x0
        self.previous = (x0, lam0)
        if t1 >= 1.0:
            return x0, v0
        if t0 <= 0.0:  # sigma ratio 1 / alpha ratio undefined at pure noise: exact first-order form
            return (1.0 - t1) * x + t1 * data, v0
        h = lam1 - lam0
        return ((1.0 - t1) / (1.0 - t0)) * x - t1 * math.expm1(-h) * data, v0


SOLVERS = {"euler": Euler, "midpoint": Midpoint, "dpm": FlowDPMSolver2M}


def make_solver(name: str):
    return SOLVERS[name]()
