"""Values read from a file, checked for type and range before anything uses them.

One rule for every record the app reads back (a run folder's status, launcher and plan, an event line): each
field has a check; a field that fails it is left out and named in a problem, so a bad file is reported and
the rest of it (and every other file) keeps working. A missing field is simply absent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

Check = Callable[[object], object]


class Invalid(ValueError):
    """A value that is not what its field holds; the message says what it should be."""


def integer(low: int | None = None, high: int | None = None) -> Check:
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid("is not a whole number")
        if (low is not None and value < low) or (high is not None and value > high):
            raise Invalid(f"is out of range ({value})")
        return value
    return check


def number(low: float | None = None, high: float | None = None, finite: bool = True) -> Check:
    """`finite=False` lets NaN and infinity through (a diverged run's loss is news, not a damaged file)."""
    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (finite and not math.isfinite(value)):
            raise Invalid("is not a finite number" if finite else "is not a number")
        if (low is not None and value < low) or (high is not None and value > high):
            raise Invalid(f"is out of range ({value})")
        return float(value)
    return check


def text(longest: int = 100_000) -> Check:
    def check(value):
        if not isinstance(value, str):
            raise Invalid("is not text")
        return value[:longest]
    return check


def flag() -> Check:
    def check(value):
        if not isinstance(value, bool):
            raise Invalid("is not true or false")
        return value
    return check


def one_of(*choices: str) -> Check:
    def check(value):
        if value not in choices or not isinstance(value, str):
            raise Invalid(f"is not one of {', '.join(choices)}")
        return value
    return check


def list_of(item: Check, longest: int = 100_000) -> Check:
    def check(value):
        if not isinstance(value, list) or len(value) > longest:
            raise Invalid("is not a list")
        return [item(v) for v in value]
    return check


def optional(check: Check) -> Check:
    """`check`, or null (None)."""
    return lambda value: None if value is None else check(value)


def check_record(record: object, fields: dict[str, Check], where: str) -> tuple[dict, list[str]]:
    """The fields of `record` that pass their checks, and a problem for each one that does not (fields
    without a check are left out)."""
    if not isinstance(record, dict):
        return {}, [f"{where} is not a JSON object"]
    clean, problems = {}, []
    for name, check in fields.items():
        if name in record:
            try:
                clean[name] = check(record[name])
            except Invalid as exc:
                problems.append(f"{where}: '{name}' {exc}")
    return clean, problems


def read_record(path: Path, fields: dict[str, Check]) -> tuple[dict, list[str]]:
    """A JSON file's checked fields: ({}, []) when it does not exist, ({}, [why]) when it cannot be read."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, []
    except (OSError, ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        return {}, [f"{path.name} cannot be read ({type(exc).__name__})"]
    return check_record(data, fields, path.name)
