"""The PyTorch denoiser backend: runs NextDiT's stages, preparing t-independent work once."""

from __future__ import annotations

import torch

from ..models.nextdit import Conditioning, NextDiT
from ..prompts import EncodedPrompt, stack_captions


class TorchDenoiser:
    """One generation's denoiser: holds the prompt conditionings for one latent size.

    batch_cfg runs the conditional and unconditional passes as one batch of two (faster on GPUs,
    where a single pass does not fill the device); otherwise they run one after the other.
    """

    def __init__(
        self,
        model: NextDiT,
        positive: EncodedPrompt,
        negative: EncodedPrompt | None,
        latent_size: tuple[int, int],
        batch_cfg: bool,
    ):
        self.model = model
        self.prompts = {"cond": [positive], "uncond": [negative], "both": [positive, negative]}
        self.latent_size = latent_size
        self.batch_cfg = batch_cfg
        self.evaluations = 0  # transformer passes, counted per sample (cond and uncond count apart)
        self._prepared: dict[str, Conditioning] = {}

    def _conditioning(self, which: str) -> Conditioning:
        if which not in self._prepared:
            features, mask = stack_captions(self.prompts[which])
            self._prepared[which] = self.model.prepare(features, mask, self.latent_size)
        return self._prepared[which]

    def _run(self, x: torch.Tensor, t: float, which: str) -> torch.Tensor:
        cond = self._conditioning(which)
        batch = cond.batch_size
        x = x.expand(batch, -1, -1, -1) if x.shape[0] != batch else x
        t_batch = torch.full((batch,), t, dtype=torch.float32, device=self.model.device)
        self.evaluations += batch
        return self.model(x.to(self.model.device), t_batch, cond)

    @torch.no_grad()
    def velocity(self, x: torch.Tensor, t: float, with_uncond: bool):
        if not with_uncond:
            return self._run(x, t, "cond"), None
        if self.batch_cfg:
            v_cond, v_uncond = self._run(x, t, "both").chunk(2)
            return v_cond, v_uncond
        return self._run(x, t, "cond"), self._run(x, t, "uncond")
