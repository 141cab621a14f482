"""The image library: PNGs in one folder, indexed in SQLite for search, favourites and a trash.

The PNG files are the truth (each carries its settings, see metadata.py); `library.sqlite` is an index
that `rebuild()` can always recreate from them. Prompt search uses SQLite FTS5. Deleting moves a file into
`.trash/` (undo moves it back); only `empty_trash()` removes files for good.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .errors import LuminaError, MetadataError
from .metadata import read_settings

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,
    name TEXT UNIQUE NOT NULL,          -- file name inside the library folder
    prompt TEXT NOT NULL DEFAULT '',
    negative_prompt TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL DEFAULT '',
    seed INTEGER,
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
TRASH = ".trash"


@dataclass(frozen=True)
class Entry:
    id: int
    path: Path
    prompt: str
    negative_prompt: str
    model: str
    seed: int | None
    width: int | None
    height: int | None
    created: float
    favourite: bool
    settings_json: str  # parsed on demand: listing 20,000 entries must stay fast

    @property
    def settings(self) -> dict:
        return json.loads(self.settings_json)


class Library:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        try:
            (self.folder / TRASH).mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(self.folder / "library.sqlite"))
            self.db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise LuminaError(f"The library folder {self.folder} cannot be used: {exc}.") from None
        self.db.row_factory = sqlite3.Row

    def close(self) -> None:
        self.db.close()

    # ---- adding and rebuilding ----------------------------------------------------------------

    def add(self, path: str | Path) -> int:
        """Index a PNG that lies in the library folder; returns its id (an indexed file keeps its id)."""
        path = Path(path)
        if path.parent.resolve() != self.folder.resolve():
            raise LuminaError(f"{path} is not in the library folder {self.folder}.")
        return self._insert(path, trashed=None)

    def _insert(self, path: Path, trashed: float | None) -> int:
        row = self.db.execute("SELECT id FROM images WHERE name = ?", (path.name,)).fetchone()
        if row:
            return row["id"]
        settings = read_settings(path)
        with self.db:
            cursor = self.db.execute(
                "INSERT INTO images (name, prompt, negative_prompt, model, seed, width, height, created, trashed,"
                " settings) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    path.name, settings.get("prompt", ""), settings.get("negative_prompt", ""),
                    settings.get("model") or "", settings.get("seed"), settings.get("width"),
                    settings.get("height"), path.stat().st_mtime, trashed, json.dumps(settings),
                ),
            )
        return cursor.lastrowid

    def rebuild(self) -> tuple[int, list[tuple[str, str]]]:
        """Re-index every PNG in the folder and the trash. Returns (indexed, [(file, why it was skipped)])."""
        favourites = {r["name"] for r in self.db.execute("SELECT name FROM images WHERE favourite = 1")}
        with self.db:
            self.db.execute("DELETE FROM images")
            self.db.execute("INSERT INTO images_fts(images_fts) VALUES ('rebuild')")
        indexed, skipped = 0, []
        for folder, trashed in ((self.folder, None), (self.folder / TRASH, time.time())):
            for path in sorted(folder.iterdir()):
                if not path.is_file() or path.name.startswith((".", "library.sqlite")):
                    continue
                if path.suffix.lower() != ".png":
                    skipped.append((path.name, "not a PNG image"))
                    continue
                try:
                    image_id = self._insert(path, trashed)
                except MetadataError as exc:
                    skipped.append((path.name, str(exc)))
                    continue
                if path.name in favourites:
                    self.set_favourite(image_id, True)
                indexed += 1
        return indexed, skipped

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

    def models(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT model FROM images WHERE model != '' ORDER BY model")]

    def get(self, image_id: int) -> Entry:
        row = self.db.execute("SELECT * FROM images WHERE id = ?", (image_id,)).fetchone()
        if row is None:
            raise LuminaError(f"No image with id {image_id} in the library.")
        return self._entry(row)

    def _entry(self, row: sqlite3.Row) -> Entry:
        folder = self.folder / TRASH if row["trashed"] is not None else self.folder
        return Entry(
            id=row["id"], path=folder / row["name"], prompt=row["prompt"], negative_prompt=row["negative_prompt"],
            model=row["model"], seed=row["seed"], width=row["width"], height=row["height"], created=row["created"],
            favourite=bool(row["favourite"]), settings_json=row["settings"],
        )

    # ---- changing --------------------------------------------------------------------------------

    def set_favourite(self, image_id: int, favourite: bool) -> None:
        with self.db:
            self.db.execute("UPDATE images SET favourite = ? WHERE id = ?", (int(favourite), image_id))

    def trash(self, ids: list[int]) -> None:
        """Move images to the trash (files go to .trash/); `restore` undoes it."""
        for image_id in ids:
            entry = self.get(image_id)
            os.replace(entry.path, self.folder / TRASH / entry.path.name)
            with self.db:
                self.db.execute("UPDATE images SET trashed = ? WHERE id = ?", (time.time(), image_id))

    def restore(self, ids: list[int]) -> None:
        for image_id in ids:
            entry = self.get(image_id)
            os.replace(entry.path, self.folder / entry.path.name)
            with self.db:
                self.db.execute("UPDATE images SET trashed = NULL WHERE id = ?", (image_id,))

    def empty_trash(self) -> int:
        """Delete trashed images for good. Returns how many."""
        entries = self.search(trashed=True, limit=-1)
        for entry in entries:
            entry.path.unlink(missing_ok=True)
            with self.db:
                self.db.execute("DELETE FROM images WHERE id = ?", (entry.id,))
        return len(entries)

    # ---- export ----------------------------------------------------------------------------------

    def export(self, ids: list[int], target: str | Path, strip_metadata: bool = False) -> Path:
        """Copy images to a folder, or into a .zip, with a metadata.jsonl manifest (one line per image).

        strip_metadata re-encodes the pixels without any text chunk (the manifest then holds only file
        names and sizes). Names are reduced to safe file names, so nothing can land outside the target.
        """
        target = Path(target)
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
        try:
            if target.suffix.lower() == ".zip":
                target.parent.mkdir(parents=True, exist_ok=True)
                temp = target.with_name(f".{target.name}.tmp")
                with zipfile.ZipFile(temp, "w", zipfile.ZIP_STORED) as archive:
                    for entry, name in zip(entries, names):
                        archive.writestr(name, _png_bytes(entry.path, strip_metadata))
                    archive.writestr("metadata.jsonl", manifest_text)
                os.replace(temp, target)
            else:
                target.mkdir(parents=True, exist_ok=True)
                for entry, name in zip(entries, names):
                    if strip_metadata:
                        (target / name).write_bytes(_png_bytes(entry.path, True))
                    else:
                        shutil.copy2(entry.path, target / name)
                (target / "metadata.jsonl").write_text(manifest_text, encoding="utf-8")
        except OSError as exc:
            raise LuminaError(f"Could not export to {target}: {exc.strerror or exc}.") from None
        return target


def _filters(text, model, favourites_only, since, until, trashed) -> tuple[str, list]:
    where, args = ["trashed IS NOT NULL" if trashed else "trashed IS NULL"], []
    if text.strip():
        where.append("id IN (SELECT rowid FROM images_fts WHERE images_fts MATCH ?)")
        args.append(fts_query(text))
    if model:
        where.append("model = ?")
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


def _png_bytes(path: Path, strip_metadata: bool) -> bytes:
    if not strip_metadata:
        return path.read_bytes()
    import io

    with Image.open(path) as image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")  # no pnginfo: every text chunk is dropped
    return buffer.getvalue()
