"""Time grids, guidance formulas against hand-computed values, and solver convergence."""

import math

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from core.sampling.guidance import DiffusersGuidance, OfficialGuidance
from core.sampling.sampler import sample
from core.sampling.schedule import diffusers_grid, official_grid, shift_time
from core.sampling.solvers import make_solver


def test_shift_matches_the_sigma_form():
    t = np.linspace(0, 1, 11)
    sigma = 1 - t
    shifted_sigma = 6 * sigma / (1 + 5 * sigma)
    assert np.allclose(shift_time(t, 6.0), 1 - shifted_sigma)
    assert official_grid(4, 1.0) == [0.0, 0.25, 0.5, 0.75, 1.0]
    grid = official_grid(18, 6.0)
    assert len(grid) == 19 and grid[0] == 0.0 and grid[-1] == 1.0
    assert grid[9] == pytest.approx(0.5 / (6 - 5 * 0.5))


def test_diffusers_grid_matches_the_scheduler():
    for steps in (1, 7, 30):
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=6.0)
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), device="cpu")
        expected = (1 - scheduler.sigmas).tolist()
        assert diffusers_grid(steps, 6.0) == pytest.approx(expected, abs=1e-7)


def test_official_renorm_clamps_per_sample_by_hand():
    guidance = OfficialGuidance(scale=4.0, trunc=1.0, renorm=1.0)
    v_cond = torch.tensor([[[[3.0, 4.0]]], [[[3.0, 4.0]]]])  # ||v_cond|| = 5 for both samples
    v_uncond = torch.tensor([[[[0.0, 0.0]]], [[[3.0, 4.0]]]])
    out = guidance.combine(v_cond, v_uncond)
    # sample 0: guided = 4 * (3, 4) = (12, 16), norm 20 >= 5 -> scaled to norm 5 -> (3, 4)
    assert torch.allclose(out[0], torch.tensor([[[3.0, 4.0]]]))
    # sample 1: guided = v_cond (norm 5 >= 5) -> unchanged (3, 4)
    assert torch.allclose(out[1], torch.tensor([[[3.0, 4.0]]]))
    # a clamp factor of 2 allows norm 10: guided (12, 16) -> (6, 8)
    out = OfficialGuidance(4.0, 1.0, 2.0).combine(v_cond[:1], v_uncond[:1])
    assert torch.allclose(out, torch.tensor([[[[6.0, 8.0]]]]))
    # renorm 0 is off: plain CFG
    out = OfficialGuidance(4.0, 1.0, 0.0).combine(v_cond[:1], v_uncond[:1])
    assert torch.allclose(out, torch.tensor([[[[12.0, 16.0]]]]))
    # below the cap nothing changes: cond (3, 4), uncond (2, 4) -> guided (6, 4), norm 7.2 <= 2 * 5
    out = OfficialGuidance(4.0, 1.0, 2.0).combine(torch.tensor([3.0, 4.0]).view(1, 1, 1, 2), torch.tensor([2.0, 4.0]).view(1, 1, 1, 2))
    assert torch.allclose(out.flatten(), torch.tensor([6.0, 4.0]))


def test_official_truncation_is_a_time_threshold():
    guidance = OfficialGuidance(scale=4.0, trunc=0.25, renorm=1.0)
    assert guidance.uses_uncond(0.0, 0, 10) and guidance.uses_uncond(0.2499, 9, 10)
    assert not guidance.uses_uncond(0.25, 0, 10) and not guidance.uses_uncond(0.9, 1, 10)
    assert not OfficialGuidance(1.0, 1.0, 1.0).uses_uncond(0.0, 0, 10)  # scale 1: v_cond exactly


def test_diffusers_truncation_is_a_step_fraction_and_rows_are_normalised():
    guidance = DiffusersGuidance(scale=4.0, trunc_ratio=0.25, normalize=True)
    assert [guidance.uses_uncond(0.0, i, 8) for i in range(8)] == [True, True] + [False] * 6
    assert not DiffusersGuidance(1.0, 1.0, True).uses_uncond(0.0, 0, 8)
    v_cond = torch.tensor([[[[3.0, 4.0], [0.0, 1.0]]]])
    v_uncond = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]]]])
    out = guidance.combine(v_cond, v_uncond)
    # each row rescaled to its own conditional norm: (12, 16) -> (3, 4); (0, 4) -> (0, 1)
    assert torch.allclose(out, v_cond)
    plain = DiffusersGuidance(4.0, 1.0, False).combine(v_cond, v_uncond)
    assert torch.allclose(plain, 4 * v_cond)


class GaussianFlow:
    """Exact velocity of the flow from N(0, 1) to N(mu, s^2): the ODE maps noise n to mu + s n."""

    evaluations = 0

    def __init__(self, mu=2.0, s=0.3):
        self.mu, self.s = mu, s

    def velocity(self, x, t, with_uncond, step, steps):
        var = t * t * self.s**2 + (1 - t) ** 2
        cov = t * self.s**2 - (1 - t)
        return self.mu + cov / var * (x - t * self.mu), None


class NoGuidance:
    def uses_uncond(self, t, step, steps):
        return False


def solve_error(solver_name, steps, shift=1.0, end=1.0):
    """Max error against the exact flow at time `end` (the sampler works in float32)."""
    noise = torch.linspace(-2, 2, 9, dtype=torch.float64).view(1, 1, 3, 3)
    flow = GaussianFlow()
    times = [t * end for t in official_grid(steps, shift)]
    x = sample(flow, noise, times, make_solver(solver_name), NoGuidance())
    exact = end * flow.mu + math.sqrt(end**2 * flow.s**2 + (1 - end) ** 2) * noise
    return (x.double() - exact).abs().max().item()


@pytest.mark.parametrize("solver,order,steps", [("euler", 1, 20), ("midpoint", 2, 10), ("dpm", 2, 40)])
def test_solvers_converge_at_their_order(solver, order, steps):
    # Up to t = 0.999: DPM-Solver's last step to t = 1 is a first-order denoise, as in every DPM++ 2M.
    coarse, fine = solve_error(solver, steps, end=0.999), solve_error(solver, 2 * steps, end=0.999)
    observed = math.log2(coarse / fine)
    assert observed > order - 0.35, f"{solver}: observed order {observed:.2f}"


@pytest.mark.parametrize("solver", ["euler", "midpoint", "dpm"])
def test_solvers_reach_the_image_on_the_shifted_grid(solver):
    coarse, fine = solve_error(solver, 32, shift=6.0), solve_error(solver, 128, shift=6.0)
    assert fine < 0.05 and fine < coarse / 2
