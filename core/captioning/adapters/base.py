"""What every captioning adapter shares: loading a model folder, batching with an out-of-memory retry, and
decoding. An adapter (one file per model family) only says how to turn images + questions into the model's
inputs and how to read its answers back.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ...devices import resolve_device, resolve_dtype
from ...storage import read_json
from ..styles import DEFAULT_MAX_TOKENS, DEFAULT_SAMPLING

log = logging.getLogger("lumina.captioning")
CAPTIONER_DEFAULTS_FILE = "lumina_captioner.json"  # a model folder's own sampling settings and token limit


class Captioner:
    """A loaded vision-language model. `caption(images, questions, system)` gives one caption per image."""

    model_type = ""
    follows_questions = True  # False: a plain captioning model (BLIP) that ignores the style's question

    def __init__(self, folder: Path, model, device: torch.device, dtype: torch.dtype):
        self.folder, self.model, self.device, self.dtype = folder, model, device, dtype
        own = read_json(folder / CAPTIONER_DEFAULTS_FILE, {})
        self.sampling = {**DEFAULT_SAMPLING, **own.get("sampling", {})}
        self.max_tokens = int(own.get("max_tokens", DEFAULT_MAX_TOKENS))
        self.batch_limit: int | None = None  # lowered after an out-of-memory error, kept for the next batches

    @property
    def name(self) -> str:
        return self.folder.name

    # ---- what an adapter provides ------------------------------------------------------------------------

    def inputs(self, images: list, questions: list[str], system: str) -> dict:
        """The model's `generate` inputs for one batch (tensors on the CPU)."""
        raise NotImplementedError

    def answers(self, output: torch.Tensor, inputs: dict) -> list[str]:
        """The generated text of each row (by default: the tokens after the prompt, special tokens dropped)."""
        new = output[:, inputs["input_ids"].shape[1]:] if "input_ids" in inputs else output
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    # ---- shared --------------------------------------------------------------------------------------------

    def generation_settings(self, sampling: dict | None, max_tokens: int | None) -> dict:
        settings = dict(self.sampling if sampling is None else sampling)
        if not settings.get("do_sample", False):  # greedy: sampling knobs would only raise warnings
            settings = {k: v for k, v in settings.items() if k not in ("temperature", "top_p", "top_k")}
        return {**settings, "max_new_tokens": max_tokens or self.max_tokens}

    @torch.inference_mode()
    def caption(self, images: list, questions: list[str], system: str = "", sampling: dict | None = None,
                max_tokens: int | None = None) -> list[str]:
        """Captions for `images` (PIL, RGB), asked `questions` (one per image). Halves the batch and retries
        on an out-of-memory error, down to one image; the smaller size is kept for later calls."""
        settings = self.generation_settings(sampling, max_tokens)
        size = min(len(images), self.batch_limit or len(images))
        captions: list[str] = []
        start = 0
        while start < len(images):
            part = slice(start, start + size)
            try:
                captions += self._generate(images[part], questions[part], system, settings)
                start += size
            except torch.OutOfMemoryError:
                if size == 1:
                    raise
                size = max(1, size // 2)
                self.batch_limit = size
                log.warning("out of memory while captioning: retrying at batch %d", size)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        return captions

    def _generate(self, images, questions, system, settings) -> list[str]:
        inputs = self.inputs(images, questions, system)
        on_device = {k: self._place(v) for k, v in inputs.items()}
        output = self.model.generate(**on_device, **settings)
        return [text.strip() for text in self.answers(output.cpu(), inputs)]

    def _place(self, value):
        if not isinstance(value, torch.Tensor):
            return value
        if value.is_floating_point():
            return value.to(self.device, self.dtype)
        return value.to(self.device)


def load_model(folder: Path, device: str, dtype: str):
    """The folder's model through AutoModelForImageTextToText, from local files only, in eval mode."""
    from transformers import AutoModelForImageTextToText
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a bar per load is noise on the command line and in the log
    target = resolve_device(device)
    precision = resolve_dtype(dtype, target)
    model = AutoModelForImageTextToText.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True, dtype=precision)
    return model.to(target).eval(), target, precision
