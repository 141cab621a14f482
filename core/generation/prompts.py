"""System prompts and the prompt template (no torch here: the app uses these too).

Template (authors and diffusers): "<system prompt> <Prompt Start> <user prompt>". The negative prompt is
encoded as-is, without a system prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import RequestError

SYSTEM_PROMPTS = {
    "real": "You are an assistant designed to generate superior images with the superior degree of image-text alignment based on textual prompts or user prompts.",
    "align": "You are an assistant designed to generate high-quality images with the highest degree of image-text alignment based on textual prompts.",
    "base": "You are an assistant designed to generate high-quality images based on user prompts.",
    "aesthetics": "You are an assistant designed to generate high-quality images with highest degree of aesthetics based on user prompts.",
    "4grid": "You are an assistant designed to generate four high-quality images with highest degree of aesthetics arranged in 2x2 grids based on user prompts.",
    "empty": "",
}
DEFAULT_SYSTEM_PROMPT = "real"
MAX_TOKENS = 256  # Gemma input length the model was trained with, system prompt included
MAX_PROMPT_CHARS = 20_000  # far beyond what 256 tokens can hold; longer input is a mistake


def system_prompt_text(name_or_text: str) -> str:
    """A system prompt by name, or custom text (anything with a space in it)."""
    if name_or_text in SYSTEM_PROMPTS:
        return SYSTEM_PROMPTS[name_or_text]
    if " " in name_or_text.strip():
        return name_or_text.strip()
    raise RequestError(
        f"Unknown system prompt '{name_or_text}'. Choose one of {', '.join(SYSTEM_PROMPTS)}, "
        "or give the system prompt's own text."
    )


def full_prompt(prompt: str, system_prompt: str) -> str:
    return f"{system_prompt} <Prompt Start> {prompt}"


@dataclass(frozen=True)
class TokenCount:
    """The answer to a token-count query (Generate's prompt, the Caption tab's caption): `count` of `limit`."""
    count: int
    limit: int
