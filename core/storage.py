"""Where Lumina Studio keeps its data, and small atomic file helpers.

The data folder is $LUMINA_STUDIO_HOME if set (tests use this), else the platform's user data folder.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


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
    except (OSError, ValueError, RecursionError):
        return default


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False))


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, text.encode("utf-8"))


def write_atomic(path: Path, content: bytes | Callable[[BinaryIO], None],
                 place: Callable[[Path, Path], Path] | None = None) -> Path:
    """The one atomic writer: a temporary file beside `path`, fsync, then a rename into place.

    A crash leaves the old file or the new one, never half of one, and a failed write leaves no temporary
    file behind. `content` is the bytes, or a function that writes them to a binary handle (a zip archive,
    a PNG encoder). The file gets the mode the umask gives (0644 under 022), as a plain `open` would:
    `mkstemp` creates 0600 files. `place(temp, path)` may claim another name (never overwriting) and
    returns where the file landed; the default replaces `path`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            if callable(content):
                content(handle)
            else:
                handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o666 & ~process_umask())
        if place is None:
            os.replace(temp, path)
            return path
        return place(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def connect_shared(path: Path, timeout: float = 30.0, **options) -> sqlite3.Connection:
    """A SQLite file that several processes use at once (the app, command-line runs, one process per GPU):
    WAL and a busy timeout. Switching a new file to WAL answers "database is locked" at once, without the
    busy wait, while another process is switching it too, so that step is retried until `timeout`."""
    db = sqlite3.connect(path, timeout=timeout, **options)
    deadline = time.monotonic() + timeout
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return db
        except sqlite3.Error as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                db.close()
                raise
            time.sleep(0.02)


CORRUPT_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def is_damaged(exc: sqlite3.Error) -> bool:
    """Whether an SQLite error says the file itself is damaged (not that it is busy or unwritable)."""
    return getattr(exc, "sqlite_errorcode", None) in CORRUPT_CODES


def check_intact(db: sqlite3.Connection) -> None:
    """Raise the damaged-file error (is_damaged says so) when SQLite's quick check finds the file damaged: some
    damage only shows when the pages are read, long after the file opened."""
    check = db.execute("PRAGMA quick_check").fetchone()[0]
    if check != "ok":
        error = sqlite3.DatabaseError(f"database disk image is malformed ({check})")
        error.sqlite_errorcode = sqlite3.SQLITE_CORRUPT
        raise error


def move_aside_damaged(path: Path) -> Path:
    """Keep a damaged SQLite file (and its -wal, -shm) under a new name, nothing deleted; returns the name."""
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            os.replace(source, aside.with_name(aside.name + suffix))
    return aside


def folder_writable(folder: Path) -> bool:
    """Whether a file can be created in `folder` (a real try: permissions alone miss read-only mounts)."""
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".lumina-write-test-")
        os.close(handle)
        os.unlink(probe)
        return True
    except OSError:
        return False


@functools.cache
def process_umask() -> int:
    """The process umask (read once: setting it back and forth is not thread-safe, so not per write)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def first_free(base: str, taken) -> str:
    """`base`, else `base-2`, `base-3`, …: the first name `taken(name)` says is free."""
    import itertools

    return next(name for name in itertools.chain([base], (f"{base}-{n}" for n in itertools.count(2)))
                if not taken(name))


def runs_dir() -> Path:
    return data_dir() / "runs"


def human_size(size: int) -> str:
    """1.23 GiB, 45.6 MiB, 789 KiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} B"
