"""The text encoder's tokenizer, through the `tokenizers` library on the model's tokenizer.json: no torch
and no transformers (whose import costs about a second), so the engine starts sooner and the app can count
tokens as you type. A tokenizer folder with only a slow (SentencePiece) tokenizer is read by transformers.

The special tokens are tokenizer.json's own template (<bos> first for Gemma), as transformers 5 reads it;
tests/test_components_parity.py checks the ids equal transformers' own.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelLoadError


class PromptTokenizer:
    def __init__(self, folder: Path):
        self.folder = folder
        if (folder / "tokenizer.json").is_file():
            self._fast = _fast_tokenizer(folder)
            self._slow = None
        else:
            self._fast = None
            self._slow = _slow_tokenizer(folder)

    def ids(self, text: str) -> list[int]:
        """Token ids with the special tokens the model expects (Gemma: <bos> first), never truncated."""
        if self._fast is not None:
            return self._fast.encode(text).ids
        return self._slow(text, truncation=False).input_ids

    def decode(self, ids: list[int]) -> str:
        if self._fast is not None:
            return self._fast.decode(ids, skip_special_tokens=True)
        return self._slow.decode(ids, skip_special_tokens=True)


def _fast_tokenizer(folder: Path):
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as exc:  # tokenizers raises a plain Exception for a damaged file
        raise ModelLoadError(f"{folder / 'tokenizer.json'} could not be loaded as a tokenizer ({exc}).") from None
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _slow_tokenizer(folder: Path):
    import transformers
    from transformers import AutoTokenizer

    transformers.utils.logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as exc:
        raise ModelLoadError(f"{folder} could not be loaded as a tokenizer ({exc}).") from None
