"""A captioned folder's state file, `.lumina-captions.sqlite` beside its images.

What the `.txt` files cannot say: which captions came from which model, style and settings, and when (a
line whose text no longer matches what a model wrote was edited by hand); each caption run's settings and
whether it finished (an unfinished run is resumed by a rerun with the same settings); and each image's
review status. SQLite: every change is one transaction, so a kill at any moment leaves it whole. The
`.txt` files stay the truth: losing this file loses provenance, never a caption.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import sys
import time
from pathlib import Path

from core.storage import check_intact, connect_shared, is_damaged, move_aside_damaged

STATE_FILE = ".lumina-captions.sqlite"
LOCK_FILE = ".lumina-captions.lock"
REVIEW_STATUSES = ("unreviewed", "approved", "needs fixing", "rejected")
HAND = "edited by hand"  # typed (or replaced) in the app's Caption panel
FROM_FILE = "from the file"  # in the .txt already: written by another tool or by hand outside the app
_SCHEMA = """
CREATE TABLE IF NOT EXISTS captions (
    image TEXT NOT NULL, text TEXT NOT NULL, source TEXT NOT NULL, style TEXT NOT NULL,
    settings TEXT NOT NULL, tokens INTEGER, created REAL NOT NULL, run TEXT,
    PRIMARY KEY (image, text));
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY, settings TEXT NOT NULL, started REAL NOT NULL, finished REAL);
CREATE TABLE IF NOT EXISTS done (run TEXT NOT NULL, image TEXT NOT NULL, PRIMARY KEY (run, image));
CREATE TABLE IF NOT EXISTS reviews (image TEXT PRIMARY KEY, status TEXT NOT NULL, updated REAL NOT NULL);
"""
_COLUMNS = {"captions": ("image", "text", "source", "style", "settings", "tokens", "created", "run"),
            "runs": ("key", "settings", "started", "finished"), "done": ("run", "image"),
            "reviews": ("image", "status", "updated")}


@contextlib.contextmanager
def folder_lock(folder: Path):
    """The folder's caption lock: one writer of a .txt at a time across processes (caption runs, the app),
    held for one image's read-change-write only, so several runs share a folder without losing lines. The
    system frees it when its holder dies, whatever killed it."""
    with open(folder / LOCK_FILE, "a+b") as handle:
        if sys.platform == "win32":
            import msvcrt

            handle.seek(0)
            while True:
                try:
                    msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
                    break
                except OSError:  # LK_LOCK gives up after 10 s: keep waiting
                    continue
            try:
                yield
            finally:
                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def review_statuses(folder: Path) -> dict[str, str]:
    """A folder's review marks (image path relative to the folder -> status), read without creating or
    changing the state file; {} when it has none or it cannot be read."""
    path = folder / STATE_FILE
    if not path.is_file():
        return {}
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            rows = db.execute("SELECT image, status FROM reviews").fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        return {}
    return {image: status for image, status in rows if isinstance(image, str) and status in REVIEW_STATUSES}


def damaged_state_message(aside: Path) -> str:
    return (f"The folder's caption state file was damaged and was set aside as {aside.name}. The captions (the "
            ".txt files) are untouched; review marks and where each caption came from start afresh.")


def run_key(settings: dict) -> str:
    """Runs with the same settings (model, styles, prompts, mode, images) share a key: a rerun resumes."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class CaptionState:
    """After opening, `recovered` names the damaged state file that was set aside (None when there was
    none): the captions are untouched, only provenance and review marks start fresh."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.path = folder / STATE_FILE
        self.recovered: Path | None = None
        try:
            self.db = self._connect()
        except sqlite3.DatabaseError as exc:
            if not (is_damaged(exc) or "no such column" in str(exc)):  # damaged, or a file of another layout
                raise
            self.recovered = move_aside_damaged(self.path)
            self.db = self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = connect_shared(self.path, check_same_thread=False)
        try:
            check_intact(db)
            db.executescript(_SCHEMA)
            for table, columns in _COLUMNS.items():  # a file of another layout is as unusable as a damaged one
                db.execute(f"SELECT {', '.join(columns)} FROM {table} LIMIT 0")
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        self.db.close()

    def relative(self, image: Path) -> str:
        return image.relative_to(self.folder).as_posix()

    # ---- runs --------------------------------------------------------------------------------------------

    def begin_run(self, settings: dict) -> tuple[str, set[str]]:
        """This run's key and the images an unfinished run with the same settings already did."""
        key = run_key(settings)
        with self.db:
            row = self.db.execute("SELECT finished FROM runs WHERE key = ?", (key,)).fetchone()
            if row is not None and row[0] is not None:  # that run finished: this is a new one
                self.db.execute("DELETE FROM done WHERE run = ?", (key,))
                self.db.execute("DELETE FROM runs WHERE key = ?", (key,))
            self.db.execute("INSERT INTO runs (key, settings, started, finished) VALUES (?, ?, ?, NULL) "
                            "ON CONFLICT(key) DO UPDATE SET finished = NULL",
                            (key, json.dumps(settings, sort_keys=True), time.time()))
        done = {r[0] for r in self.db.execute("SELECT image FROM done WHERE run = ?", (key,))}
        return key, done

    def mark_done(self, run: str, image: Path) -> None:
        with self.db:
            self.db.execute("INSERT OR IGNORE INTO done (run, image) VALUES (?, ?)", (run, self.relative(image)))

    def finish_run(self, key: str) -> None:
        with self.db:
            self.db.execute("UPDATE runs SET finished = ? WHERE key = ?", (time.time(), key))

    def update_captions(self, run: str, image: Path, written: list[dict], change) -> list[str]:
        """Write a run's new captions of `image` ({"text", "source", "style", "settings", "tokens"} each) as one
        step with their record, safe against other writers
        and against a kill at any moment: under the folder's lock, the captions are recorded as this run's,
        `change(current lines)` gives the lines to write, the .txt is replaced, then the image is marked done.
        A run resumed after a kill between the write and the mark finds its lines in the .txt
        (`written_before`) and does not add them again. Returns the lines written."""
        from .files import read_captions, write_captions

        with folder_lock(self.folder):
            self._claim(run, image, written)
            lines = change(read_captions(image))
            write_captions(image, lines)
            self.mark_done(run, image)
        return lines

    def record_hand(self, image: Path, captions: list[str]) -> None:
        """Lines typed (or replaced) in the app; a line a model wrote keeps its record."""
        now = time.time()
        with self.db:
            self.db.executemany(
                "INSERT OR IGNORE INTO captions (image, text, source, style, settings, tokens, created, run) "
                "VALUES (?, ?, ?, '', '{}', NULL, ?, NULL)",
                [(self.relative(image), text, HAND, now) for text in captions])

    def written_before(self, run: str) -> dict[str, set[str]]:
        """Captions a run recorded for images it did not mark done (it was killed in between): image -> texts."""
        found: dict[str, set[str]] = {}
        for image, text in self.db.execute(
                "SELECT image, text FROM captions WHERE run = ? AND created >= (SELECT started FROM runs WHERE "
                "key = ?) AND image NOT IN (SELECT image FROM done WHERE run = ?)", (run, run, run)):
            found.setdefault(image, set()).add(text)
        return found

    def _claim(self, run: str, image: Path, written: list[dict]) -> None:
        now = time.time()
        with self.db:
            self.db.executemany(
                "INSERT INTO captions (image, text, source, style, settings, tokens, created, run) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(image, text) DO UPDATE SET source = excluded.source, "
                "style = excluded.style, settings = excluded.settings, tokens = excluded.tokens, "
                "created = excluded.created, run = excluded.run",
                [(self.relative(image), w["text"], w["source"], w["style"],
                  json.dumps(w.get("settings", {}), sort_keys=True), w.get("tokens"), now, run) for w in written])

    # ---- reading -----------------------------------------------------------------------------------------

    def sources(self, image: Path, captions: list[str]) -> list[dict]:
        """Where each of the image's current captions came from: the model and style that wrote that exact
        text, "edited by hand" (typed in the app), or "from the file" (no record: it was in the .txt)."""
        rows = {r[0]: r for r in self.db.execute(
            "SELECT text, source, style, tokens, created FROM captions WHERE image = ?", (self.relative(image),))}
        found = []
        for text in captions:
            row = rows.get(text)
            found.append({"text": text, "source": row[1], "style": row[2], "tokens": row[3], "created": row[4]}
                         if row else {"text": text, "source": FROM_FILE, "style": "", "tokens": None, "created": None})
        return found

    # ---- review ------------------------------------------------------------------------------------------

    def set_status(self, image: Path, status: str) -> None:
        if status not in REVIEW_STATUSES:
            raise ValueError(f"unknown review status {status!r}")
        with self.db:
            self.db.execute("INSERT INTO reviews (image, status, updated) VALUES (?, ?, ?) ON CONFLICT(image) "
                            "DO UPDATE SET status = excluded.status, updated = excluded.updated",
                            (self.relative(image), status, time.time()))

    def statuses(self) -> dict[str, str]:
        """Each image's review status; a status this version does not know counts as unreviewed."""
        return {image: status for image, status in self.db.execute("SELECT image, status FROM reviews")
                if status in REVIEW_STATUSES and isinstance(image, str)}
