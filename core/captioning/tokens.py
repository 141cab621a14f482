"""How long a caption is for a Lumina model: its Gemma tokens with the default system prompt, which is what
the DiT reads (at most 256, core.prompts.MAX_TOKENS).

Counted with the `tokenizers` library on the model's `tokenizer.json` (no torch, so the app counts as you
type); a model with only a slow tokenizer is counted through transformers.
"""

from __future__ import annotations

import threading

from ..prompts import DEFAULT_SYSTEM_PROMPT, full_prompt, system_prompt_text


def lumina_token_counter(model: str | None = None, slow_allowed: bool = True):
    """A function text -> token count, with the tokenizer of `model` (a path or registered name; the demo
    model by default). Only the tokenizer is loaded. None when it cannot be counted without transformers
    and `slow_allowed` is False."""
    from ..models.registry import find_model

    folder = find_model(model).components / "tokenizer"
    system = system_prompt_text(DEFAULT_SYSTEM_PROMPT)
    lock = threading.Lock()  # a tokenizer is not to be called from two threads at once (the worker's queries)
    if (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        fast = Tokenizer.from_file(str(folder / "tokenizer.json"))
        fast.no_truncation()
        fast.no_padding()
        encode = lambda text: len(fast.encode(text).ids)  # noqa: E731
    elif slow_allowed:
        from ..models.loader import load_tokenizer

        slow = load_tokenizer(folder.parent)
        encode = lambda text: len(slow(text, truncation=False).input_ids)  # noqa: E731
    else:
        return None

    def count(text: str) -> int:
        with lock:
            return encode(full_prompt(text, system))

    return count
