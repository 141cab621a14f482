"""Cached sampling: exactness at threshold 0, real skipping above it, per-pass and per-generation state."""

import numpy as np
import pytest

from core.errors import RequestError
from core.generation.request import GenerationRequest
from core.sampling import cache as cache_module
from core.sampling.cache import CacheSettings

REQUEST = dict(prompt="a red circle on the left", width=64, height=64, steps=30, seed=3, solver="euler")


def psnr(a, b) -> float:
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


def test_settings_parse():
    assert CacheSettings.parse("off") is None and CacheSettings.parse(None) is None
    assert CacheSettings.parse("0.3") == CacheSettings(0.3, "auto") and str(CacheSettings.parse("0.3")) == "0.3"
    assert CacheSettings.parse("v2:0.5") == CacheSettings(0.5, "v2") and str(CacheSettings(0.5, "v2")) == "v2:0.5"
    for bad in ("fast", "-0.1", "v3:0.2", "nan"):
        with pytest.raises(RequestError, match="Cache setting"):
            CacheSettings.parse(bad)


def test_threshold_zero_is_exactly_uncached(engine):
    plain = engine.generate(GenerationRequest(**REQUEST))[0]
    cached = engine.generate(GenerationRequest(**REQUEST, cache="0"))[0]
    assert np.array_equal(plain.pixels, cached.pixels)
    assert cached.joint_evaluations == cached.evaluations == plain.evaluations


def test_threshold_skips_and_stays_close(engine):
    plain = engine.generate(GenerationRequest(**REQUEST))[0]
    cached = engine.generate(GenerationRequest(**REQUEST, cache="1.0"))[0]
    assert cached.evaluations == plain.evaluations
    assert cached.joint_evaluations < 0.7 * cached.evaluations
    assert cached.record["run"]["cache_skipped"] == cached.evaluations - cached.joint_evaluations
    quality = psnr(plain.pixels, cached.pixels)
    print(f"cache 1.0: {cached.joint_evaluations}/{cached.evaluations} joint evaluations, PSNR {quality:.1f} dB")
    assert quality > 40


def test_first_and_last_steps_run_and_passes_keep_apart(engine, monkeypatch):
    decisions = []
    original = cache_module.StepCache.should_compute

    def spy(self, which, signal, step, steps):
        result = original(self, which, signal, step, steps)
        decisions.append((which, step, steps, result))
        return result

    monkeypatch.setattr(cache_module.StepCache, "should_compute", spy)
    engine.generate(GenerationRequest(**REQUEST, cache="3", cfg_trunc=0.5))
    assert {d[0] for d in decisions} == {"cond", "uncond"}
    assert all(result for which, step, steps, result in decisions if step in (0, steps - 1))
    assert any(not result for *_, result in decisions)
    # CFG truncation: the unconditional pass stops, the conditional one goes on to the last step
    assert max(step for which, step, *_ in decisions if which == "uncond") < 29
    assert max(step for which, step, *_ in decisions if which == "cond") == 29


def test_no_state_leaks_between_generations(engine):
    first = engine.generate(GenerationRequest(**REQUEST, cache="1.0", count=2))
    again = engine.generate(GenerationRequest(**{**REQUEST, "seed": 4}, cache="1.0"))[0]
    assert np.array_equal(first[1].pixels, again.pixels)
    assert first[1].joint_evaluations == again.joint_evaluations


def test_consecutive_skips_are_capped(engine):
    # v2's polynomial is negative for tiny changes: without the cap it would skip to the end.
    cached = engine.generate(GenerationRequest(**REQUEST, cache="v2:1.1"))[0]
    assert cached.joint_evaluations >= cached.evaluations / (cache_module.MAX_SKIPS_IN_A_ROW + 1)


def test_onnx_backend_uses_the_same_policy(engine, onnx_engine):
    request = GenerationRequest(**{**REQUEST, "steps": 12}, cache="1.0")
    ours, theirs = engine.generate(request)[0], onnx_engine.generate(request)[0]
    assert ours.joint_evaluations == theirs.joint_evaluations < ours.evaluations
    assert np.abs(ours.pixels - theirs.pixels).max() < 1e-4


def test_fitting_recovers_a_known_polynomial():
    from core.sampling.cache_fit import fit

    changes = np.linspace(0.01, 0.5, 50)
    coefficients = fit([(x, 3 * x**2 - x + 0.05) for x in changes])
    assert np.allclose(coefficients, [0, 0, 3, -1, 0.05], atol=1e-6)


def test_calibration_makes_threshold_0_3_skip_the_published_share():
    from core.sampling.cache_fit import CALIBRATION_SKIPPED, Recording, calibrate, skipped_share

    rng = np.random.default_rng(0)
    recording = Recording(passes=[
        [(which, None if step in (0, 29) else float(rng.uniform(0.001, 0.02))) for step in range(30)
         for which in ("cond", "uncond")] for _ in range(20)])
    polynomial = [0.0, 0.0, 0.0, 1.0, 0.0]  # the change itself
    assert skipped_share(recording, polynomial, 0.3) > 0.7  # unscaled, 0.3 skips nearly up to the cap
    scale = calibrate(recording, polynomial)
    scaled = [c * scale for c in polynomial]
    assert skipped_share(recording, scaled, 0.3) >= CALIBRATION_SKIPPED
    assert skipped_share(recording, [c * 1.05 for c in scaled], 0.3) < CALIBRATION_SKIPPED  # the smallest such
    assert skipped_share(recording, scaled, 0.2) < CALIBRATION_SKIPPED < skipped_share(recording, scaled, 0.5)


def test_a_model_carries_its_own_fitted_polynomial(tiny_model, tmp_path):
    import shutil

    from core.generation.engine import Engine
    from core.errors import ModelLoadError
    from core.models.sources import resolve_source
    from core.sampling.cache_fit import fit_calibrated, record_changes, write_fitted

    folder = shutil.copytree(tiny_model, tmp_path / "fitted")
    plain = Engine(resolve_source(folder), device="cpu")
    plain.load()
    recording = record_changes(plain, ["a red circle", "a blue square"], steps=8, width=64, height=64)
    assert len(recording.pairs) > 20 and all(x >= 0 and y >= 0 for x, y in recording.pairs)
    assert len(recording.passes) == 2
    assert plain.generate(GenerationRequest(**REQUEST, cache="0.3"))[0].record["run"]["cache_coefficients"] == "v1"

    coefficients, scale = fit_calibrated(recording)
    write_fitted(folder / "transformer", coefficients, f"two prompts, 8 steps, scaled x{scale:.3g}")
    fitted = Engine(resolve_source(folder), device="cpu")
    fitted.load()
    assert fitted.fitted_cache == coefficients
    used = {cache: fitted.generate(GenerationRequest(**REQUEST, cache=cache))[0].record["run"]["cache_coefficients"]
            for cache in ("0.3", "v1:0.3", "v2:0.3")}
    assert used == {"0.3": "model", "v1:0.3": "v1", "v2:0.3": "v2"}

    (folder / "transformer" / "step_cache.json").write_text('{"coefficients": [1, 2]}')
    with pytest.raises(ModelLoadError, match="step_cache.json is not a usable"):
        Engine(resolve_source(folder), device="cpu").load()
