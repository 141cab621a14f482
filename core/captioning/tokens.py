"""How long a caption is for a Lumina model: its Gemma tokens with the default system prompt, which is what
the DiT reads (at most 256, core.generation.prompts.MAX_TOKENS).

Counted with the model's own tokenizer (core.models.tokenizer: no torch, so the app counts as you type).
"""

from __future__ import annotations

import threading

from ..generation.prompts import DEFAULT_SYSTEM_PROMPT, full_prompt, system_prompt_text


def lumina_token_counter(model: str | None = None, slow_allowed: bool = True):
    """A function text -> token count, with the tokenizer of `model` (a path or registered name; the demo
    model by default). Only the tokenizer is loaded. None when it cannot be counted without transformers
    and `slow_allowed` is False."""
    from ..models.registry import find_model
    from ..models.tokenizer import PromptTokenizer

    folder = find_model(model).components / "tokenizer"
    system = system_prompt_text(DEFAULT_SYSTEM_PROMPT)
    lock = threading.Lock()  # a tokenizer is not to be called from two threads at once (the worker's queries)
    if not (folder / "tokenizer.json").is_file() and not slow_allowed:
        return None
    tokenizer = PromptTokenizer(folder)

    def count(text: str) -> int:
        with lock:
            return len(tokenizer.ids(full_prompt(text, system)))

    return count
