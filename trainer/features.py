"""Pre-computed training inputs: VAE latents per stage resolution and Gemma-2 caption features.

Computed once before training (with progress) and kept in the run folder, so the frozen VAE and text
encoder are not in memory while the DiT trains. A file already there is reused (a resumed run or a
re-run does not encode again). Each stage gets a manifest listing its items, buckets and features.
"""

from __future__ import annotations

import hashlib
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from core.images import open_image
from core.models import loader
from core.models.sources import ModelSource
from core.generation.prompt_encoder import PromptEncoder
from core.generation.prompts import MAX_TOKENS, full_prompt, system_prompt_text
from core.storage import read_json, write_json_atomic

from .buckets import bucket_sizes, fit_to_bucket, nearest_bucket
from .config import RunConfig, StageConfig
from .datasets import Item, stage_items, stage_validation

ENCODE_BATCH = 8


def _key(*parts) -> str:
    return hashlib.sha1("\x00".join(str(p) for p in parts).encode()).hexdigest()[:20]


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(temp))
    temp.replace(path)


def caption_texts(stage: StageConfig, item: Item) -> list[str]:
    """The full texts the text encoder sees for an item in a stage (system prompt template applied)."""
    system = item.system_prompt if stage.system_prompt == "dataset" else system_prompt_text(stage.system_prompt)
    return [full_prompt(caption, system) for caption in item.captions]


class FeatureCache:
    """The run's features folder: writes them (launcher) and reads them back (training processes).

    Read features stay in memory up to `memory_budget` bytes, so small datasets are read from disk once.
    """

    def __init__(self, run_dir: Path, memory_budget: int = 2 * 2**30):
        self.root = Path(run_dir) / "features"
        self.memory_budget = memory_budget
        self._memory: dict[str, torch.Tensor] = {}
        self._memory_bytes = 0

    def text_path(self, text: str) -> Path:
        return self.root / "text" / f"{_key(text)}.safetensors"

    def manifest_path(self, stage_index: int) -> Path:
        return self.root / f"stage-{stage_index}.json"

    def manifest(self, stage_index: int) -> dict:
        manifest = read_json(self.manifest_path(stage_index), None)
        if manifest is None:
            raise FileNotFoundError(f"{self.manifest_path(stage_index)} is missing: the features were not prepared.")
        return manifest

    def _load(self, relative: str, name: str) -> torch.Tensor:
        tensor = self._memory.get(relative)
        if tensor is None:
            tensor = load_file(str(self.root / relative))[name]
            size = tensor.numel() * tensor.element_size()
            if self._memory_bytes + size <= self.memory_budget:
                self._memory[relative] = tensor
                self._memory_bytes += size
        return tensor

    def load_text(self, relative: str) -> torch.Tensor:
        return self._load(relative, "features")

    def load_latent(self, relative: str) -> torch.Tensor:
        return self._load(relative, "latent")

    # ---- computing them (the launcher, before training starts) --------------------------------------

    def prepare(self, config: RunConfig, source: ModelSource, items: list[Item], device: torch.device,
                dtype: torch.dtype, validation: list[Item] = ()) -> tuple[list[str], int]:
        """Encode every stage's latents (training and validation images) and every caption. Returns the
        images that could not be read (they are left out) and how many captions were cut at the 256-token
        limit."""
        components = source.components
        failed = []
        per_stage = [stage_items(stage, items) for stage in config.stages]
        sample_systems = [self._sample_system_prompt(s, i) for s, i in zip(config.stages, per_stage)]
        vae = loader.load_vae(components, dtype, device)
        try:
            for index, stage in enumerate(config.stages):
                held = stage_validation(config, stage, list(validation))
                failed += self._encode_latents(index, stage, per_stage[index], vae, held)
        finally:
            del vae
            _free(device)
        tokenizer = loader.load_tokenizer(components)
        encoder = loader.load_text_encoder(components, dtype, device)
        try:
            prompts = PromptEncoder(tokenizer, encoder, max_tokens=MAX_TOKENS, cache_size=1)
            texts = {"", *(full_prompt(p, system) for system in sample_systems for p in config.samples.prompts)}
            for index in range(len(config.stages)):
                manifest = self.manifest(index)
                for entry in [*manifest["items"], *manifest.get("validation", [])]:
                    texts.update(entry["texts"])
            truncated = self._encode_texts(sorted(texts), prompts)
        finally:
            del encoder
            _free(device)
        for index, system in enumerate(sample_systems):
            self._finish_manifest(index, [full_prompt(p, system) for p in config.samples.prompts])
        return sorted(set(failed)), truncated

    @staticmethod
    def _sample_system_prompt(stage: StageConfig, items: list[Item]) -> str:
        """Samples are prompted the way the stage trains: its system prompt, else its first dataset's."""
        if stage.system_prompt != "dataset":
            return system_prompt_text(stage.system_prompt)
        return items[0].system_prompt if items else system_prompt_text("real")

    @torch.no_grad()
    def _encode_latents(self, index: int, stage: StageConfig, items: list[Item], vae,
                        validation: list[Item]) -> list[str]:
        folder = self.root / f"latents-{stage.resolution}"
        folder.mkdir(parents=True, exist_ok=True)
        buckets = bucket_sizes(stage.resolution)
        entries, failed, unreadable, todo = [], [], set(), defaultdict(list)
        held = {str(item.image) for item in validation}
        for item in [*items, *validation]:
            bucket = nearest_bucket(item.width, item.height, buckets)
            try:
                stat = item.image.stat()
            except OSError as exc:  # deleted (or moved) since the datasets were checked: skipped, as unreadable ones
                failed.append(f"{item.image}: {exc.strerror or exc} (gone since the dataset check; skipped)")
                continue
            relative = f"{folder.name}/{_key(item.image.resolve(), stat.st_mtime_ns, stat.st_size, bucket)}.safetensors"
            entry = {"image": str(item.image), "dataset": item.dataset, "bucket": list(bucket),
                     "latent": relative, "texts": caption_texts(stage, item)}
            entries.append(entry)
            if not (self.root / relative).exists():
                todo[bucket].append(entry)
        total = sum(len(v) for v in todo.values())
        with tqdm(total=total, desc=f"latents for stage '{stage.name}' ({stage.resolution}px)", unit="img",
                  file=sys.stderr, disable=total == 0) as bar:
            for bucket, pending in todo.items():
                for start in range(0, len(pending), ENCODE_BATCH):
                    batch, pixels = [], []
                    for entry in pending[start : start + ENCODE_BATCH]:
                        try:
                            with open_image(entry["image"]) as image:
                                fitted = fit_to_bucket(image.convert("RGB"), bucket)
                        except (OSError, ValueError) as exc:
                            failed.append(f"{entry['image']}: {exc}")
                            unreadable.add(entry["image"])
                            continue
                        batch.append(entry)
                        pixels.append(torch.from_numpy(np.asarray(fitted, dtype=np.float32) / 127.5 - 1.0))
                    if batch:
                        latents = loader.encode_pixels(vae, torch.stack(pixels).permute(0, 3, 1, 2))
                        for entry, latent in zip(batch, latents):
                            _save_atomic({"latent": latent.cpu()}, self.root / entry["latent"])
                    bar.update(len(pending[start : start + ENCODE_BATCH]))
        entries = [e for e in entries if e["image"] not in unreadable]
        write_json_atomic(self.manifest_path(index), {
            "stage": stage.name, "resolution": stage.resolution, "failed": failed,
            "items": [e for e in entries if e["image"] not in held],
            "validation": [e for e in entries if e["image"] in held]})
        return failed

    def _encode_texts(self, texts: list[str], prompts: PromptEncoder) -> int:
        """Encodes the texts not cached yet; returns how many were cut at the token limit."""
        todo = [t for t in texts if not self.text_path(t).exists()]
        (self.root / "text").mkdir(parents=True, exist_ok=True)
        cut = 0
        for text in tqdm(todo, desc="caption features", unit="caption", file=sys.stderr, disable=not todo):
            encoded = prompts.encode(text)
            cut += bool(encoded.truncated_text)
            _save_atomic({"features": encoded.features[0]}, self.text_path(text))
        return cut

    def _finish_manifest(self, index: int, sample_texts: list[str]) -> None:
        """Texts become file names; the stage's sample prompts and the empty caption are added."""
        manifest = self.manifest(index)
        relative = lambda text: str(self.text_path(text).relative_to(self.root))  # noqa: E731
        for entry in [*manifest["items"], *manifest.get("validation", [])]:
            entry["texts"] = [relative(t) for t in entry["texts"]]
        manifest["samples"] = [relative(t) for t in sample_texts]
        manifest["empty"] = relative("")
        write_json_atomic(self.manifest_path(index), manifest)


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
