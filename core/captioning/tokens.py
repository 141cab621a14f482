"""How long a caption is for a Lumina model: its Gemma tokens with the default system prompt, which is what
the DiT reads (at most 256, core.prompts.MAX_TOKENS)."""

from __future__ import annotations

import threading

from ..prompts import DEFAULT_SYSTEM_PROMPT, full_prompt, system_prompt_text


def lumina_token_counter(model: str | None = None):
    """A function text -> token count, with the tokenizer of `model` (a path or registered name; the demo
    model by default). Only the tokenizer is loaded."""
    from ..models.loader import load_tokenizer
    from ..models.registry import find_model

    tokenizer = load_tokenizer(find_model(model).components)
    system = system_prompt_text(DEFAULT_SYSTEM_PROMPT)
    lock = threading.Lock()  # a fast tokenizer is not to be called from two threads at once (the worker's queries)

    def count(text: str) -> int:
        with lock:
            return len(tokenizer(full_prompt(text, system), truncation=False).input_ids)

    return count
