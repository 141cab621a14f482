"""The sampling loop: one loop for every solver, guidance dialect and backend."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from ..errors import Cancelled


class Denoiser(Protocol):
    """What a backend provides: velocities for the conditional (and optionally unconditional) prompt."""

    evaluations: int

    def velocity(
        self, x: torch.Tensor, t: float, with_uncond: bool, step: int, steps: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...


class Guidance(Protocol):
    def uses_uncond(self, t: float, step: int, steps: int) -> bool: ...

    def combine(self, v_cond: torch.Tensor, v_uncond: torch.Tensor) -> torch.Tensor: ...


@dataclass
class StepInfo:
    step: int  # steps done, 1-based
    total: int
    t: float  # time reached
    elapsed: float  # seconds since the loop started
    latent: torch.Tensor
    denoised: torch.Tensor  # the model's current estimate of the final latent (for previews)

    @property
    def eta(self) -> float:
        return self.elapsed / self.step * (self.total - self.step)


def sample(
    denoiser: Denoiser,
    latent: torch.Tensor,
    times: list[float],
    solver,
    guidance: Guidance,
    on_step: Callable[[StepInfo], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Integrate from times[0] to times[-1]. Cancels between steps (and before the first)."""
    steps = len(times) - 1
    started = time.perf_counter()
    x = latent.float()
    for i in range(steps):
        if should_stop is not None and should_stop():
            raise Cancelled()

        def guided_velocity(x_in: torch.Tensor, t: float, step: int = i) -> torch.Tensor:
            use_uncond = guidance.uses_uncond(t, step, steps)
            v_cond, v_uncond = denoiser.velocity(x_in, t, use_uncond, step, steps)
            return guidance.combine(v_cond, v_uncond) if use_uncond else v_cond

        t0, t1 = times[i], times[i + 1]
        x_next, v0 = solver.step(guided_velocity, x, t0, t1)
        if on_step is not None:
            denoised = x + (1.0 - t0) * v0
            on_step(StepInfo(i + 1, steps, t1, time.perf_counter() - started, x_next, denoised))
        x = x_next
    return x
