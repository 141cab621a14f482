"""The image library: PNGs in one folder, indexed in SQLite for search, favourites and a trash.

The PNG files are the truth (each carries its settings, see metadata.py); `library.sqlite` is an index
that `rebuild()` can always recreate from them (favourites are also kept in `.favourites.json` for that;
a damaged index is moved aside and rebuilt). Prompt search uses SQLite FTS5. Deleting moves a file into
`.trash/` (undo moves it back); only `empty_trash()` removes files for good.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LuminaError, MetadataError
from .exports import ExportError, building_folder, check_file_target, check_folder_target
from .exports import reason as export_reason
from .images import open_image
from .metadata import read_settings
from .storage import (check_intact, connect_shared, is_damaged, move_aside_damaged, read_json, write_json_atomic,
                      write_text_atomic)

# 2: seeds stored as text (SQLite integers stop at 2^63-1; seeds go to 2^64-1); 3: the model's hash, its identity
SCHEMA_VERSION = 3
SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,
    name TEXT UNIQUE NOT NULL,          -- file name inside the library folder
    prompt TEXT NOT NULL DEFAULT '',
    negative_prompt TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL DEFAULT '',
    model_hash TEXT NOT NULL DEFAULT '',  -- sha256 of the DiT weights ('' when the image does not say)
    seed TEXT,                          -- decimal digits
    width INTEGER,
    height INTEGER,
    created REAL NOT NULL,              -- file modification time when indexed
    favourite INTEGER NOT NULL DEFAULT 0,
    trashed REAL,                       -- when it went to the trash; NULL when not trashed
    settings TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS images_created ON images(created);
CREATE VIRTUAL TABLE IF NOT EXISTS images_fts USING fts5(
    prompt, negative_prompt, model, content='images', content_rowid='id'
);
CREATE TRIGGER IF NOT EXISTS images_ai AFTER INSERT ON images BEGIN
    INSERT INTO images_fts(rowid, prompt, negative_prompt, model)
    VALUES (new.id, new.prompt, new.negative_prompt, new.model);
END;
CREATE TRIGGER IF NOT EXISTS images_ad AFTER DELETE ON images BEGIN
    INSERT INTO images_fts(images_fts, rowid, prompt, negative_prompt, model)
    VALUES ('delete', old.id, old.prompt, old.negative_prompt, old.model);
END;
"""
DROP_SCHEMA = "DROP TRIGGER IF EXISTS images_ai; DROP TRIGGER IF EXISTS images_ad; DROP TABLE IF EXISTS images_fts;" \
              " DROP TABLE IF EXISTS images;"
INDEX = "library.sqlite"
TRASH = ".trash"
FAVOURITES = ".favourites.json"  # the favourites outside SQLite, so a rebuild or a damaged index keeps them


@dataclass(frozen=True)
class Entry:
    id: int
    path: Path
    prompt: str
    negative_prompt: str
    model: str
    model_hash: str
    seed: int | None
    width: int | None
    height: int | None
    created: float
    favourite: bool
    settings_json: str  # parsed on demand: listing 20,000 entries must stay fast

    @property
    def settings(self) -> dict:
        return json.loads(self.settings_json)

    @property
    def model_key(self) -> str:
        """The model's identity for filtering: its hash, or its name when the image records no hash."""
        return self.model_hash or f"name:{self.model}"


@dataclass
class Outcome:
    """What a trash or restore did: the ids it moved, and one line per file it could not handle."""

    moved: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class Library:
    """The index over one folder. After opening, `recovered` names the damaged index that was moved aside
    (the index is then empty and `needs_rebuild` is true: call `rebuild()`, in the background in the app)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.recovered: Path | None = None
        self.needs_rebuild = False
        try:
            (self.folder / TRASH).mkdir(parents=True, exist_ok=True)
            try:
                self.db = self._connect()
            except sqlite3.DatabaseError as exc:
                if not is_damaged(exc):
                    raise
                self.recovered = self._move_aside()
                self.db = self._connect()
        except (OSError, sqlite3.Error) as exc:
            raise LuminaError(f"The library folder {self.folder} cannot be used: {exc}.") from None

    def _connect(self) -> sqlite3.Connection:
        # WAL and a busy timeout: the app and a command-line run can add images at the same time.
        db = connect_shared(self.folder / INDEX)
        try:
            db.row_factory = sqlite3.Row
            check_intact(db)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            has_table = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'images'").fetchone() is not None
            if has_table and version < SCHEMA_VERSION:  # an older layout: the index is rebuilt from the files
                self._save_favourites(db)
                db.executescript(DROP_SCHEMA)
                self.needs_rebuild = True
            db.executescript(SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        return db

    def _move_aside(self) -> Path:
        """Keep the damaged index under a new name (nothing is deleted) and start an empty one."""
        self.needs_rebuild = True
        return move_aside_damaged(self.folder / INDEX)

    def close(self) -> None:
        self.db.close()

    # ---- adding and rebuilding ----------------------------------------------------------------

    def add(self, path: str | Path) -> int:
        """Index a PNG that lies in the library folder; returns its id (an indexed file keeps its id)."""
        path = Path(path)
        if path.parent.resolve() != self.folder.resolve():
            raise LuminaError(f"{path} is not in the library folder {self.folder}.")
        row = _row(path, trashed=None)
        with self.db:  # one statement: another process may add the same file at the same moment
            self.db.execute(f"INSERT INTO images ({_COLUMNS}) VALUES ({_PLACES}) ON CONFLICT(name) DO NOTHING", row)
        return self.db.execute("SELECT id FROM images WHERE name = ?", (path.name,)).fetchone()["id"]

    def sync(self) -> list[int]:
        """Index the PNGs in the folder that the index does not know yet (made by another process, or while
        the app was closed); returns their ids. Only new files are read, so this is cheap to call often."""
        known = {r[0] for r in self.db.execute("SELECT name FROM images")}
        added = []
        for path in sorted(self.folder.glob("*.png")):
            if path.name not in known and not path.name.startswith("."):
                try:
                    added.append(self.add(path))
                except (MetadataError, OSError):
                    continue  # not one of ours, or still being written: a rebuild lists it
        return added

    def ids_after(self, image_id: int) -> list[int]:
        """Images indexed after `image_id` (by any process), oldest first."""
        return [r[0] for r in self.db.execute("SELECT id FROM images WHERE id > ? ORDER BY id", (image_id,))]

    def last_id(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(id), 0) FROM images").fetchone()[0]

    def rebuild(self) -> tuple[int, list[tuple[str, str]]]:
        """Re-index every PNG in the folder and the trash. Returns (indexed, [(file, why it was skipped)]).

        All or nothing: every file is read first, then the index is swapped in one transaction, so an
        interruption leaves the old index. Favourites come back from the favourites file, trash state from
        where each file lies (.trash/).
        """
        favourites = self._favourite_names()
        trashed_at = {r["name"]: r["trashed"] for r in self.db.execute("SELECT name, trashed FROM images")}
        rows, skipped = [], []
        for folder, in_trash in ((self.folder, False), (self.folder / TRASH, True)):
            for path in sorted(folder.iterdir()):
                if not path.is_file() or path.name.startswith((".", INDEX)):
                    continue
                if path.suffix.lower() != ".png":
                    skipped.append((path.name, "not a PNG image"))
                    continue
                trashed = (trashed_at.get(path.name) or time.time()) if in_trash else None
                try:
                    rows.append(_row(path, trashed, favourite=path.name in favourites))
                except (MetadataError, OSError) as exc:
                    skipped.append((path.name, str(exc)))
        with self.db:
            self.db.execute("DELETE FROM images")
            self.db.executemany(f"INSERT OR IGNORE INTO images ({_COLUMNS}) VALUES ({_PLACES})", rows)
            self.db.execute("INSERT INTO images_fts(images_fts) VALUES ('rebuild')")
        self.needs_rebuild = False
        self._save_favourites(self.db)
        return len(rows), skipped

    def _favourite_names(self) -> set[str]:
        saved = read_json(self.folder / FAVOURITES, None)
        if isinstance(saved, list):
            return {name for name in saved if isinstance(name, str)}
        return {r["name"] for r in self.db.execute("SELECT name FROM images WHERE favourite = 1")}

    def _save_favourites(self, db: sqlite3.Connection) -> None:
        names = [r[0] for r in db.execute("SELECT name FROM images WHERE favourite = 1 ORDER BY name")]
        write_json_atomic(self.folder / FAVOURITES, names)

    # ---- finding ---------------------------------------------------------------------------------

    def search(
        self,
        text: str = "",
        model: str | None = None,
        favourites_only: bool = False,
        since: float | None = None,
        until: float | None = None,
        trashed: bool = False,
        limit: int = 200,
        offset: int = 0,
    ) -> list[Entry]:
        """Newest first. `text` matches words of the prompt, negative prompt or model name (prefixes too)."""
        where, args = _filters(text, model, favourites_only, since, until, trashed)
        sql = f"SELECT * FROM images WHERE {where} ORDER BY created DESC, id DESC LIMIT ? OFFSET ?"
        return [self._entry(row) for row in self.db.execute(sql, (*args, limit, offset))]

    def count_matching(self, text: str = "", model: str | None = None, favourites_only: bool = False,
                       since: float | None = None, until: float | None = None, trashed: bool = False) -> int:
        where, args = _filters(text, model, favourites_only, since, until, trashed)
        return self.db.execute(f"SELECT COUNT(*) FROM images WHERE {where}", args).fetchone()[0]

    def count(self, trashed: bool = False) -> int:
        return self.count_matching(trashed=trashed)

    def models(self) -> list[tuple[str, str]]:
        """(model key, name) per model, one entry per identity: images of the same weights under other names
        (a folder renamed, "demo" and "demo-model") count as one model, shown by its newest name."""
        return [(r[0], r[1]) for r in self.db.execute(
            f"SELECT key, model FROM (SELECT {_MODEL_KEY} AS key, model, ROW_NUMBER() OVER (PARTITION BY "
            f"{_MODEL_KEY} ORDER BY created DESC, id DESC) AS newest FROM images WHERE model != '' OR "
            "model_hash != '') WHERE newest = 1 ORDER BY model")]

    def get(self, image_id: int) -> Entry:
        row = self.db.execute("SELECT * FROM images WHERE id = ?", (image_id,)).fetchone()
        if row is None:
            raise LuminaError(f"No image with id {image_id} in the library.")
        return self._entry(row)

    def _entry(self, row: sqlite3.Row) -> Entry:
        folder = self.folder / TRASH if row["trashed"] is not None else self.folder
        return Entry(
            id=row["id"], path=folder / row["name"], prompt=row["prompt"], negative_prompt=row["negative_prompt"],
            model=row["model"], model_hash=row["model_hash"], seed=None if row["seed"] is None else int(row["seed"]), width=row["width"], height=row["height"], created=row["created"],
            favourite=bool(row["favourite"]), settings_json=row["settings"],
        )

    # ---- changing --------------------------------------------------------------------------------

    def set_favourite(self, image_id: int, favourite: bool) -> None:
        with self.db:
            self.db.execute("UPDATE images SET favourite = ? WHERE id = ?", (int(favourite), image_id))
        self._save_favourites(self.db)

    def trash(self, ids: list[int]) -> Outcome:
        """Move images to the trash (files go to .trash/); `restore(outcome.moved)` undoes it."""
        return self._move(ids, self.folder / TRASH, trashed=True)

    def restore(self, ids: list[int]) -> Outcome:
        return self._move(ids, self.folder, trashed=False)

    def _move(self, ids: list[int], destination: Path, trashed: bool) -> Outcome:
        """Each file on its own: one that is gone leaves the index; one that cannot move stays as it was."""
        outcome = Outcome()
        for image_id in ids:
            row = self.db.execute("SELECT * FROM images WHERE id = ?", (image_id,)).fetchone()
            if row is None:
                continue
            entry = self._entry(row)
            target = destination / entry.path.name
            if not entry.path.exists():
                with self.db:
                    self.db.execute("DELETE FROM images WHERE id = ?", (image_id,))
                outcome.problems.append(f"{entry.path.name} was no longer on disk; it was removed from the library.")
                continue
            if target.exists():
                outcome.problems.append(f"{entry.path.name} was left where it is: {destination} already has a file "
                                        "of that name.")
                continue
            try:
                os.replace(entry.path, target)
            except OSError as exc:
                outcome.problems.append(f"{entry.path.name} could not be moved: {exc.strerror or exc}.")
                continue
            with self.db:
                self.db.execute("UPDATE images SET trashed = ? WHERE id = ?", (time.time() if trashed else None, image_id))
            outcome.moved.append(image_id)
        return outcome

    def empty_trash(self) -> int:
        """Delete trashed images for good. Returns how many."""
        entries = self.search(trashed=True, limit=-1)
        for entry in entries:
            entry.path.unlink(missing_ok=True)
            with self.db:
                self.db.execute("DELETE FROM images WHERE id = ?", (entry.id,))
        self._save_favourites(self.db)
        return len(entries)

    # ---- export ----------------------------------------------------------------------------------

    def export(self, ids: list[int], target: str | Path, strip_metadata: bool = False, replace: bool = False) -> Path:
        """Copy images to a new or empty folder, or into a .zip, with a metadata.jsonl manifest; see export_steps."""
        steps = self.export_steps(ids, target, strip_metadata, replace)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value

    def export_steps(self, ids: list[int], target: str | Path, strip_metadata: bool = False, replace: bool = False):
        """Export, yielding (images done, total) as it goes (stop iterating to cancel: nothing is left behind);
        returns the target. A folder target must be new or empty and outside the library; a .zip is replaced
        only when `replace` (the save dialog asked). Everything is built aside and renamed into place. The
        checks run at the call (their errors are raised there); the writing runs as the generator is iterated,
        on any thread.

        strip_metadata re-encodes the pixels without any text chunk (the manifest then holds only file
        names and sizes). Names are reduced to safe file names, so nothing can land outside the target.
        """
        target = Path(target)
        if target.suffix.lower() == ".zip":
            check_file_target(target, ".zip", replace)
        else:
            check_folder_target(target, [self.folder])
        entries = [self.get(i) for i in ids]
        names = _unique_safe_names([e.path.name for e in entries])
        manifest = []
        for entry, name in zip(entries, names):
            line = {"file_name": name, "width": entry.width, "height": entry.height}
            if not strip_metadata:
                line.update({"prompt": entry.prompt, "negative_prompt": entry.negative_prompt, "seed": entry.seed,
                             "model": entry.model, "settings": entry.settings})
            manifest.append(line)
        manifest_text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in manifest)
        return _write_export(target, [e.path for e in entries], names, manifest_text, strip_metadata)


def _write_export(target: Path, paths: list[Path], names: list[str], manifest_text: str, strip_metadata: bool):
    """The export's writing half (no database: it may run on another thread), a generator; see export_steps."""
    partial = target.with_name(f".{target.name}-partial")
    try:
        if target.suffix.lower() == ".zip":
            with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as archive:
                for done, (path, name) in enumerate(zip(paths, names)):
                    archive.writestr(name, _exported_png(path, strip_metadata))
                    yield done + 1, len(paths)
                archive.writestr("metadata.jsonl", manifest_text)
            os.replace(partial, target)
        else:
            with building_folder(target) as building:
                for done, (path, name) in enumerate(zip(paths, names)):
                    (building / name).write_bytes(_exported_png(path, strip_metadata))
                    yield done + 1, len(paths)
                write_text_atomic(building / "metadata.jsonl", manifest_text)
    except OSError as exc:
        raise ExportError(f"Could not export to {target}: {export_reason(exc)}.") from None
    finally:
        partial.unlink(missing_ok=True)
    return target


_COLUMN_NAMES = ("name", "prompt", "negative_prompt", "model", "model_hash", "seed", "width", "height", "created", "trashed",
                 "favourite", "settings")
_COLUMNS = ", ".join(_COLUMN_NAMES)
_MODEL_KEY = "(CASE WHEN model_hash != '' THEN model_hash ELSE 'name:' || model END)"
_PLACES = ", ".join("?" * len(_COLUMN_NAMES))


def _row(path: Path, trashed: float | None, favourite: bool = False) -> tuple:
    """One index row read from a PNG (raises MetadataError for a file without readable settings)."""
    settings = read_settings(path)
    seed = settings.get("seed")
    return (path.name, settings.get("prompt", ""), settings.get("negative_prompt", ""), settings.get("model") or "",
            settings.get("model_hash") or "", None if seed is None else str(seed), settings.get("width"), settings.get("height"), path.stat().st_mtime,
            trashed, int(favourite), json.dumps(settings))


def _filters(text, model, favourites_only, since, until, trashed) -> tuple[str, list]:
    where, args = ["trashed IS NOT NULL" if trashed else "trashed IS NULL"], []
    if text.strip():
        where.append("id IN (SELECT rowid FROM images_fts WHERE images_fts MATCH ?)")
        args.append(fts_query(text))
    if model:  # a key from models()
        where.append(f"{_MODEL_KEY} = ?")
        args.append(model)
    if favourites_only:
        where.append("favourite = 1")
    if since is not None:
        where.append("created >= ?")
        args.append(since)
    if until is not None:
        where.append("created < ?")
        args.append(until)
    return " AND ".join(where), args


def fts_query(text: str) -> str:
    """User text -> an FTS5 query: every word must match (as a prefix); quotes keep punctuation harmless."""
    words = re.findall(r"\w+", text, flags=re.UNICODE)
    return " AND ".join(f'"{w}"*' for w in words) if words else '""'


def safe_name(name: str) -> str:
    """A plain file name: no folders, no leading dots, only harmless characters."""
    name = Path(name.replace("\\", "/")).name
    name = re.sub(r"[^\w.\- ]", "_", name).strip(" .")
    return name or "image.png"


def _unique_safe_names(names: list[str]) -> list[str]:
    seen, out = set(), []
    for name in names:
        candidate, stem, suffix, n = safe_name(name), Path(safe_name(name)).stem, Path(safe_name(name)).suffix, 2
        while candidate.lower() in seen:
            candidate, n = f"{stem}-{n}{suffix}", n + 1
        seen.add(candidate.lower())
        out.append(candidate)
    return out


def _exported_png(path: Path, strip_metadata: bool) -> bytes:
    """An image's bytes as exported; a file gone since it was selected is named (nothing is exported)."""
    import io

    try:
        if not strip_metadata:
            return path.read_bytes()
        with open_image(path) as image:
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="PNG")  # no pnginfo: every text chunk is dropped
        return buffer.getvalue()
    except FileNotFoundError:
        raise ExportError(f"{path.name} vanished during the export (deleted outside the app?); nothing was "
                          "exported: try again without it.") from None
