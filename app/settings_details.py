"""An image's generation settings as the Gallery's details show them (labels a person reads, empty values
left out, every value escaped); the Train tab's sample dialog shows a sample's settings the same way."""

from __future__ import annotations

from core.generation.request import FIELD_LABELS, request_fields

from .plain_text import escape


def details_html(settings: dict, extra: list[tuple[str, object]] = ()) -> str:
    rows = [(FIELD_LABELS[name], settings.get(name)) for name in request_fields() if name != "count"]
    return "".join(f"<b>{label}</b>: {escape(value)}<br>" for label, value in [*rows, *extra]
                   if value not in (None, ""))
