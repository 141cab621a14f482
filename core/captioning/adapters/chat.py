"""Chat prompts for instruction-following captioners: the messages, and where a folder keeps its template."""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import ModelLoadError


def chat_messages(system: str, question: str) -> list[dict]:
    """A system message (when there is one) and the user's image followed by the question."""
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    return ([{"role": "system", "content": system}] if system else []) + [user]


def chat_template(folder: Path, holder) -> str:
    """The folder's chat template: the processor's or tokenizer's own, else `chat_template.jinja` or
    `chat_template.json` (which AutoTokenizer does not read, REFERENCE.md 7)."""
    for owner in (holder, getattr(holder, "tokenizer", None)):
        template = getattr(owner, "chat_template", None)
        if isinstance(template, str) and template:
            return template
    jinja, packed = folder / "chat_template.jinja", folder / "chat_template.json"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    if packed.is_file():
        try:
            return json.loads(packed.read_text(encoding="utf-8"))["chat_template"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"{packed} has no readable chat template ({exc}).") from None
    raise ModelLoadError(f"{folder} has no chat template (none in its tokenizer or processor, no "
                         "chat_template.jinja or chat_template.json): it cannot be asked for a caption.")
