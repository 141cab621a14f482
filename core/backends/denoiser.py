"""One generation's denoiser over any staged backend, with the optional step cache.

A backend provides four stages (see TorchStages / OrtStages):
  prepare(features, mask, latent_size) -> Conditioning     once per prompt set and size
  embed(x, t, cond, with_signal) -> hidden, temb, signal    per pass (signal: for the cache)
  joint(hidden, temb, cond) -> hidden                       per pass, unless the cache skips it
  final(hidden, temb, cond) -> velocity (float32)           per pass
"""

from __future__ import annotations

import torch

from ..generation.prompt_encoder import EncodedPrompt, stack_captions
from ..sampling.cache import StepCache


class StagedDenoiser:
    """One request's denoiser. Prompt conditionings are prepared once and shared by the request's images;
    `start_image` gives each image fresh counters and its own cache, so no state crosses generations.

    batch_cfg runs the conditional and unconditional passes as one batch of two (better on GPUs).
    With a cache each pass keeps its own state, so the passes run apart.
    """

    def __init__(self, stages, positive: EncodedPrompt, negative: EncodedPrompt, latent_size: tuple[int, int],
                 batch_cfg: bool):
        self.stages = stages
        self.prompts = {"cond": [positive], "uncond": [negative], "both": [positive, negative]}
        self.latent_size = latent_size
        self.wants_batch_cfg = batch_cfg
        self._prepared = {}
        self.start_image(None)

    def start_image(self, cache: StepCache | None) -> None:
        self.cache = cache
        self.batch_cfg = self.wants_batch_cfg and cache is None
        self.evaluations = 0  # transformer passes, per sample (cond and uncond counted apart)
        self.joint_evaluations = 0  # of those, the passes whose joint blocks ran

    def _conditioning(self, which: str):
        if which not in self._prepared:
            features, mask = stack_captions(self.prompts[which])
            self._prepared[which] = self.stages.prepare(features, mask, self.latent_size)
        return self._prepared[which]

    def _run(self, x: torch.Tensor, t: float, which: str, step: int, steps: int) -> torch.Tensor:
        cond = self._conditioning(which)
        batch = cond.batch_size
        x = x.expand(batch, -1, -1, -1) if x.shape[0] != batch else x
        t_batch = torch.full((batch,), t, dtype=torch.float32, device=x.device)
        hidden, temb, signal = self.stages.embed(x, t_batch, cond, with_signal=self.cache is not None)
        self.evaluations += batch
        if self.cache is None or self.cache.should_compute(which, signal, step, steps):
            out = self.stages.joint(hidden, temb, cond)
            self.joint_evaluations += batch
            if self.cache is not None:
                self.cache.remember(which, out - hidden)
        else:
            out = hidden + self.cache.residual(which)
        velocity = self.stages.final(out, temb, cond)
        if self.cache is not None:
            self.cache.observe(which, velocity)
        return velocity

    @torch.no_grad()
    def velocity(self, x: torch.Tensor, t: float, with_uncond: bool, step: int = 0, steps: int = 1):
        if not with_uncond:
            return self._run(x, t, "cond", step, steps), None
        if self.batch_cfg:
            v_cond, v_uncond = self._run(x, t, "both", step, steps).chunk(2)
            return v_cond, v_uncond
        return self._run(x, t, "cond", step, steps), self._run(x, t, "uncond", step, steps)
