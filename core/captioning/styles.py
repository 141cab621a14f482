"""Caption styles (the authors' UniCap granularities) and the prompt a captioner is asked with.

Each style is a system prompt plus a question, written in the manner of OmniCaptioner (the authors' released
captioner); the defaults for sampling are OmniCaptioner's. A custom template may use {name} (the image's
file name without its suffix), {folder} (its folder's name) and {caption} (its current first caption).
No torch here: the app lists the styles too.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Style:
    name: str
    system: str
    question: str


STYLES = {
    "detailed": Style(
        "detailed",
        "You are a helpful assistant that writes detailed captions for images. Describe every visible object "
        "with its colour, shape, size and position, the background, and how the objects relate to each other.",
        "Describe this image in detail."),
    "medium": Style(
        "medium",
        "You are a helpful assistant that writes captions for images. Describe the main objects with their "
        "colours and positions in one sentence.",
        "Describe this image in one sentence."),
    "short": Style(
        "short",
        "You are a helpful assistant that writes short captions for images. Name the main objects in a few words.",
        "Give a short caption for this image."),
    "tags": Style(
        "tags",
        "You are a helpful assistant that tags images. List the key tags of the image, separated by commas.",
        "What are the key tags associated with this image?"),
}
# OmniCaptioner's sampling settings; a model folder may carry its own (see adapters.base.CAPTIONER_DEFAULTS_FILE).
DEFAULT_SAMPLING = {"do_sample": True, "temperature": 0.2, "top_p": 0.8, "top_k": 10, "repetition_penalty": 1.2}
DEFAULT_MAX_TOKENS = 512
TEMPLATE_FIELDS = ("name", "folder", "caption")


class StyleError(ValueError):
    """A style or prompt template a person gave cannot be used; the message says why."""


@dataclass(frozen=True)
class Prompt:
    """What one caption is asked with: its style's name (the label kept in the state file), system and question."""
    style: str
    system: str
    question: str
    prefix: str = ""
    suffix: str = ""

    def question_for(self, name: str, folder: str, caption: str) -> str:
        return self.question.format_map({"name": name, "folder": folder, "caption": caption})

    def finish(self, text: str) -> str:
        """The caption as written: one line (a line of a .txt is one alternative caption), prefix and suffix."""
        from ..datasets import clean_caption  # here: the CLI's parser reads this module's style names

        line = clean_caption(text)
        return f"{self.prefix}{line}{self.suffix}".strip() if line else ""


def prompts_for(styles: list[str] | tuple[str, ...], custom: str = "", system: str = "", prefix: str = "",
                suffix: str = "") -> list[Prompt]:
    """The prompts of a job: one per named style, or one custom question (with an optional system prompt)."""
    if custom:
        check_template(custom)
        return [Prompt("custom", system, custom, prefix, suffix)]
    if not styles:
        raise StyleError("Choose at least one caption style: " + ", ".join(STYLES) + ".")
    unknown = [s for s in styles if s not in STYLES]
    if unknown:
        raise StyleError(f"Unknown caption style '{unknown[0]}'. Choose from {', '.join(STYLES)}.")
    return [Prompt(s, system or STYLES[s].system, STYLES[s].question, prefix, suffix)
            for s in dict.fromkeys(styles)]


def check_template(template: str) -> None:
    import string

    try:
        names = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as exc:
        raise StyleError(f"The prompt template cannot be read: {exc}. Write a literal brace as {{{{ or }}}}.") from exc
    unknown = [n for n in names if n not in TEMPLATE_FIELDS]
    if unknown:
        raise StyleError(f"The prompt template uses {{{unknown[0]}}}; it may use "
                         + ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS) + ".")
