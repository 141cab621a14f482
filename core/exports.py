"""Where an export may write: the one rule for the Gallery's export and the caption exports.

An export writes into a new or empty folder only, never inside its source (nor around it), and builds the
result in a temporary folder beside the target that is renamed into place at the end: a failure or a cancel
leaves nothing under the target's name. A single-file export (a .jsonl, a .zip) never replaces a file unless
asked (--force, or the save dialog's own question), and never one of another kind than it writes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import LuminaError
from .storage import process_umask


class ExportError(LuminaError):
    """An export target that cannot be used, or an export that failed; the message says why."""


def check_folder_target(out: Path, sources: Iterable[Path]) -> None:
    """Refuse a target folder that is a source, lies inside one or holds one, is a file, or is not empty."""
    target = out.expanduser().resolve()
    for source in sources:
        source = source.expanduser().resolve()
        if target == source or source in target.parents:
            raise ExportError(f"{out} is inside the folder being exported ({source}): choose a folder outside it.")
        if target in source.parents:
            raise ExportError(f"{out} holds the folder being exported ({source}): choose a new folder outside it.")
    if out.is_symlink() or out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file: choose a new or empty folder.")
    if out.is_dir() and any(out.iterdir()):
        raise ExportError(f"{out} is not empty: choose a new or empty folder (nothing in it is replaced).")


def check_file_target(out: Path, suffix: str, replace: bool) -> None:
    """Refuse a single-file target of another kind than `suffix`, or one that exists unless `replace`."""
    if out.suffix.lower() != suffix:
        raise ExportError(f"{out} does not end in {suffix}: give a {suffix} file name.")
    if out.is_dir():
        raise ExportError(f"{out} is a folder: give a {suffix} file name.")
    if (out.exists() or out.is_symlink()) and not replace:
        raise ExportError(f"{out} exists already: choose another name, or replace it (--force).")


@contextlib.contextmanager
def building_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside `out` to build the export in; renamed to `out` when the body ends well,
    removed when it fails (an empty `out` is replaced)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-partial-"))
    try:
        os.chmod(temp, 0o777 & ~process_umask())  # mkdtemp makes it 0700: the export gets the mode a mkdir would
        yield temp
        if out.is_dir():
            out.rmdir()  # empty (checked before): a file that appeared in it since stops the rename
        os.rename(temp, out)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def reason(exc: OSError) -> str:
    return "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
