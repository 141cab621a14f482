"""Gemma-2 prompt encoding (penultimate hidden state) with a cache of recent encodings."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from .prompts import MAX_TOKENS


@dataclass
class EncodedPrompt:
    features: torch.Tensor  # (1, L, width): only real tokens, no padding
    token_count: int  # tokens used (after truncation)
    truncated_text: str  # what was cut off, "" when nothing


class PromptEncoder:
    """Tokenise and encode texts; remembers the last few encodings (prompts repeat in a queue)."""

    def __init__(self, tokenizer, text_encoder, max_tokens: int = MAX_TOKENS, cache_size: int = 32):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.max_tokens = max_tokens
        self.cache_size = cache_size
        self._cache: OrderedDict[str, EncodedPrompt] = OrderedDict()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.ids(text))

    def truncation(self, text: str) -> tuple[list[int], int, str]:
        """Token ids kept, how many were dropped, and the text cut off ("" when the text fits)."""
        ids = self.tokenizer.ids(text)
        if len(ids) <= self.max_tokens:
            return ids, 0, ""
        dropped = ids[self.max_tokens :]
        return ids[: self.max_tokens], len(dropped), self.tokenizer.decode(dropped)

    @torch.no_grad()
    def encode(self, text: str) -> EncodedPrompt:
        if text in self._cache:
            self._cache.move_to_end(text)
            return self._cache[text]
        ids, _, cut = self.truncation(text)
        if ids:
            device = next(self.text_encoder.parameters()).device
            input_ids = torch.tensor([ids], dtype=torch.long, device=device)
            features = self.text_encoder(input_ids).cpu()  # the penultimate layer's hidden state
        else:  # a tokenizer without <bos> gives no tokens for "": an empty caption, as in diffusers
            param = next(self.text_encoder.parameters())
            features = torch.zeros(1, 0, self.text_encoder.config.hidden_size, dtype=param.dtype)
        encoded = EncodedPrompt(features=features, token_count=len(ids), truncated_text=cut)
        self._cache[text] = encoded
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return encoded


def stack_captions(encodings: list[EncodedPrompt]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad several encodings into one batch: features (B, L, width) and a 0/1 mask (B, L)."""
    width = max(e.features.shape[1] for e in encodings)
    dim = encodings[0].features.shape[2]
    features = encodings[0].features.new_zeros(len(encodings), width, dim)
    mask = torch.zeros(len(encodings), width, dtype=torch.long)
    for row, e in enumerate(encodings):
        features[row, : e.token_count] = e.features[0]
        mask[row, : e.token_count] = 1
    return features, mask
