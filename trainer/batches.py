"""The order of training data: a pure function of (seed, stage, position), so a resumed run sees
exactly the batches an uninterrupted one would.

Per epoch the items are shuffled, grouped by bucket (a batch has one image size), cut into
micro-batches and the micro-batches shuffled. Micro-batch g of the stage goes to process g % world;
each process reads the items of its own micro-batches only.
"""

from __future__ import annotations

import torch

from .features import FeatureCache


def _generator(*parts: int) -> torch.Generator:
    seed = 0
    for part in parts:
        seed = (seed * 1_000_003 + int(part)) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


class StageData:
    def __init__(self, cache: FeatureCache, manifest: dict, micro_batch: int, seed: int, stage_index: int):
        self.cache = cache
        self.items = manifest["items"]
        if not self.items:
            raise RuntimeError(f"stage '{manifest['stage']}' has no usable items; see dataset_report.json.")
        self.empty = manifest["empty"]
        self.micro_batch = micro_batch
        self.seed = seed
        self.stage_index = stage_index
        self._epoch, self._batches = -1, []
        self.batches_per_epoch = len(self._epoch_batches(0))

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        order = torch.randperm(len(self.items), generator=_generator(self.seed, self.stage_index, epoch, 1)).tolist()
        by_bucket: dict[tuple, list[int]] = {}
        for index in order:
            by_bucket.setdefault(tuple(self.items[index]["bucket"]), []).append(index)
        batches = [members[i : i + self.micro_batch] for members in by_bucket.values()
                   for i in range(0, len(members), self.micro_batch)]
        shuffle = torch.randperm(len(batches), generator=_generator(self.seed, self.stage_index, epoch, 2)).tolist()
        return [batches[i] for i in shuffle]

    def indices(self, position: int) -> list[int]:
        """The item indices of the stage's micro-batch number `position`."""
        epoch, offset = divmod(position, self.batches_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, self._epoch_batches(epoch)
        return self._batches[offset]

    def load(self, position: int, generator: torch.Generator, caption_dropout: float):
        """Latents (B, C, h, w), caption features (B, L, D) right-padded, and the 0/1 mask (B, L)."""
        latents, captions = [], []
        for index in self.indices(position):
            item = self.items[index]
            latents.append(self.cache.load_latent(item["latent"]))
            choice = int(torch.randint(len(item["texts"]), (1,), generator=generator))
            dropped = float(torch.rand(1, generator=generator)) < caption_dropout
            captions.append(self.cache.load_text(self.empty if dropped else item["texts"][choice]))
        width = max(c.shape[0] for c in captions)
        features = captions[0].new_zeros(len(captions), width, captions[0].shape[1])
        mask = torch.zeros(len(captions), width, dtype=torch.long)
        for row, caption in enumerate(captions):
            features[row, : caption.shape[0]] = caption
            mask[row, : caption.shape[0]] = 1
        return torch.stack(latents), features, mask
