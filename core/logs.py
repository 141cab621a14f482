"""The log file: every traceback a worker or the app caught, in the data folder, rotated.

`logs/lumina-studio.log` (1 MiB, 3 older files kept). The app sets it up at start; a message shown to a
person stays short, and names this file for the details.
"""

from __future__ import annotations

import logging
import sys
from logging.handlers import RotatingFileHandler
from pathlib import Path

from .storage import data_dir


def log_folder() -> Path:
    return data_dir() / "logs"


def log_file() -> Path:
    return log_folder() / "lumina-studio.log"


def setup_logging() -> Path | None:
    """Send the `lumina` loggers and uncaught exceptions to the log file; None when it cannot be written.

    Calling it again (another data folder) moves the log there."""
    logger = logging.getLogger("lumina")
    path = log_file()
    for old in [h for h in logger.handlers if getattr(h, "lumina_log", False)]:
        logger.removeHandler(old)
        old.close()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = RotatingFileHandler(path, maxBytes=1 << 20, backupCount=3, encoding="utf-8")
    except OSError:
        return None
    handler.lumina_log = True
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    if not getattr(sys.excepthook, "lumina_log", False):
        previous = sys.excepthook

        def log_uncaught(kind, value, trace):
            logger.error("uncaught exception", exc_info=(kind, value, trace))
            previous(kind, value, trace)

        log_uncaught.lumina_log = True
        sys.excepthook = log_uncaught
    return path
