"""Where Lumina Studio keeps its data, and small atomic file helpers.

The data folder is $LUMINA_STUDIO_HOME if set (tests use this), else the platform's user data folder.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path


def data_dir() -> Path:
    override = os.environ.get("LUMINA_STUDIO_HOME")
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", Path.home())) / "LuminaStudio"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "Lumina Studio"
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "lumina-studio"


def library_dir() -> Path:
    return data_dir() / "library"


def read_json(path: Path, default):
    """The file's JSON, or `default` when it does not exist or is unreadable (a corrupt cache is rebuilt)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False))


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and a rename: a crash leaves the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        Path(temp).unlink(missing_ok=True)


def runs_dir() -> Path:
    return data_dir() / "runs"


def human_size(size: int) -> str:
    """1.23 GiB, 45.6 MiB, 789 KiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} B"
