"""Reviewing a captioned folder, without Qt: the images, their captions and review status, filters, find &
replace, and export. The Caption panel draws this; the CLI's `caption-export` uses the export.

Captions are read lazily (one `.txt` when an image is shown) or all at once in the background (`read_all`,
for filters and find & replace over the whole folder): that read changes nothing of the dataset's, and the GUI
thread takes its result in with `merge`. Every change is written at once: the `.txt` atomically, the status
to the state file.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..datasets import list_images
from ..errors import LuminaError
from ..exports import building_folder, check_file_target, check_folder_target
from ..exports import reason as export_reason
from ..storage import folder_writable, write_json_atomic, write_text_atomic
from .files import clean_caption, decode_legacy, read_captions, sidecar, split_captions, write_captions
from .state import FROM_FILE, HAND, REVIEW_STATUSES, CaptionState, folder_lock

EXPORT_FORMATS = {"txt": "a .txt beside each image (in a new folder, images copied)",
                  "imagefolder": "Hugging Face imagefolder: metadata.jsonl with file_name, text (the first caption) "
                                 "and captions (all of them)",
                  "jsonl": "the Lumina authors' jsonl: {\"path\", \"prompt\"}"}


class ReviewError(LuminaError):
    """A filter, replacement or export a person asked for cannot be done; the message says why."""


@dataclass
class Change:
    """One image's captions before and after a replacement."""
    image: str
    before: list[str]
    after: list[str]


@dataclass
class Filter:
    status: str = ""  # one of REVIEW_STATUSES, "" for any
    text: str = ""
    regex: bool = False
    min_tokens: int = 0
    max_tokens: int = 0  # 0: no upper bound
    uncaptioned: bool = False

    def active(self) -> bool:
        return bool(self.status or self.text or self.min_tokens or self.max_tokens or self.uncaptioned)


def compile_pattern(text: str, regex: bool) -> re.Pattern:
    try:
        return re.compile(text if regex else re.escape(text), re.IGNORECASE)
    except re.error as exc:
        raise ReviewError(f"The regular expression cannot be read: {exc}.") from None


CaptionFile = tuple[list[str], str | None, str | None]  # captions, why unreadable, the legacy-decoded text


@dataclass(frozen=True)
class FolderRead:
    """What reading a whole folder found (CaptionDataset.read_all), for the GUI thread to take in."""
    files: dict[str, CaptionFile]  # image -> its caption file, as read_caption_file found it
    broken: dict[str, str]  # image -> why the image itself cannot be read
    lengths: dict[str, int]  # caption text -> tokens


def read_caption_file(image: Path) -> CaptionFile:
    """(captions, why they cannot be read, the file decoded as a legacy encoding) for one image."""
    try:
        return read_captions(image), None, None
    except UnicodeDecodeError:
        legacy = None
        with contextlib.suppress(OSError):
            legacy = decode_legacy(sidecar(image).read_bytes())
        return [], "not UTF-8 text", legacy
    except OSError as exc:
        return [], exc.strerror or str(exc), None


class CaptionDataset:
    """One folder under review. Images are paths relative to the folder (as the state file keeps them)."""

    def __init__(self, folder: Path, recursive: bool = True, counter: Callable[[str], int] | None = None):
        self.folder = folder
        self.images = [p.relative_to(folder).as_posix() for p in list_images(folder, recursive)]
        self.counter = counter
        self.writable = folder_writable(folder)
        self.state = CaptionState(folder) if self.writable else None
        self.status = self.state.statuses() if self.state else {}
        self._captions: dict[str, list[str]] = {}
        self.unreadable: dict[str, str] = {}  # image -> why its caption cannot be read
        self.legacy_text: dict[str, str] = {}  # image -> its caption file decoded as Windows-1252 / Latin-1 (not UTF-8)
        self.broken: dict[str, str] = {}  # image -> why the image itself cannot be read (found by read_all)
        self._lengths: dict[str, int] = {}  # caption text -> tokens (counted once; read_all counts them all)

    def close(self) -> None:
        if self.state is not None:
            self.state.close()

    def path(self, image: str) -> Path:
        return self.folder / image

    # ---- captions and status ------------------------------------------------------------------------

    def captions(self, image: str) -> list[str]:
        if image not in self._captions:
            self._take(image, *read_caption_file(self.path(image)))
        return self._captions[image]

    def _take(self, image: str, lines: list[str], why: str | None, legacy: str | None) -> None:
        self._captions[image] = lines
        if why is not None:
            self.unreadable[image] = why
        if legacy is not None:
            self.legacy_text[image] = legacy

    def convert_to_utf8(self, image: str) -> None:
        """Rewrite a caption file that is not UTF-8 as UTF-8, with the text it shows decoded (its one way to
        become editable: it is never overwritten otherwise)."""
        if image not in self.legacy_text:
            raise ReviewError(f"{image}'s caption file is not one to convert.")
        if not self.writable:
            raise ReviewError(f"{self.folder} is read-only: captions cannot be changed here.")
        self._write(image, split_captions(self.legacy_text[image]))  # cached before the marks go: a background
        self.unreadable.pop(image, None)  # read must not read it again
        self.legacy_text.pop(image, None)

    def read_all(self, should_stop: Callable[[], bool] = lambda: False) -> FolderRead | None:
        """Read every caption, count its tokens and check every image's header (50,000 images take a few
        seconds: a background task). Changes nothing here: `merge` takes the result in. None when stopped."""
        from PIL import Image

        from ..images import open_image, problem

        found = FolderRead({}, {}, {})
        for image in self.images:
            if should_stop():
                return None
            found.files[image] = read_caption_file(self.path(image))
            if self.counter is not None:
                for caption in found.files[image][0]:
                    if caption not in found.lengths:
                        found.lengths[caption] = self.counter(caption)
            try:
                with open_image(self.path(image)) as opened:
                    opened.size  # noqa: B018 (the header is read: enough to tell an image from a broken file)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                found.broken[image] = problem(exc)
        return found

    def merge(self, found: FolderRead) -> None:
        """Take in a background read; a caption read or written here since is newer and is kept."""
        for image, file in found.files.items():
            if image not in self._captions:
                self._take(image, *file)
        self.broken.update(found.broken)
        for text, count in found.lengths.items():
            self._lengths.setdefault(text, count)

    def load_all(self) -> None:
        """Every caption read now, on this thread (find & replace, the CLI)."""
        self.merge(self.read_all())

    def forget(self, image: str) -> None:
        """Read the image's caption again next time (a captioner wrote it)."""
        self._captions.pop(image, None)

    def set_captions(self, image: str, captions: list[str]) -> None:
        if not self.writable:
            raise ReviewError(f"{self.folder} is read-only: captions cannot be changed here.")
        if image in self.unreadable:
            raise ReviewError(f"{sidecar(self.path(image)).name} cannot be read ({self.unreadable[image]}), so it "
                              "is left as it is.")
        self._write(image, [line for line in map(clean_caption, captions) if line])

    def _write(self, image: str, lines: list[str]) -> None:
        with folder_lock(self.folder):  # a captioning run writes one image at a time under the same lock
            write_captions(self.path(image), lines)
        self._captions[image] = lines
        if self.state is not None:
            self.state.record_hand(self.path(image), lines)

    def status_of(self, image: str) -> str:
        return self.status.get(image, "unreviewed")

    def set_status(self, image: str, status: str) -> None:
        if self.state is None:
            raise ReviewError(f"{self.folder} is read-only: review statuses cannot be saved here.")
        self.state.set_status(self.path(image), status)
        self.status[image] = status

    def sources(self, image: str) -> list[dict]:
        captions = self.captions(image)
        if self.state is None:
            return [{"text": c, "source": "", "style": "", "tokens": None} for c in captions]
        return self.state.sources(self.path(image), captions)

    def hand_edited(self, image: str) -> bool:
        """Whether a caption of the image was not written by a captioner here (typed, or from the file)."""
        return any(s["source"] in (HAND, FROM_FILE) for s in self.sources(image))

    def set_counter(self, counter) -> None:
        """Count with another Lumina model's tokenizer from now on."""
        self.counter, self._lengths = counter, {}

    def tokens(self, text: str) -> int | None:
        if self.counter is None:
            return None
        if text not in self._lengths:
            self._lengths[text] = self.counter(text)
        return self._lengths[text]

    # ---- filtering and replacing ---------------------------------------------------------------------

    def matching(self, rule: Filter) -> list[str]:
        if not rule.active():
            return list(self.images)
        pattern = compile_pattern(rule.text, rule.regex) if rule.text else None
        found = []
        for image in self.images:
            if rule.status and self.status_of(image) != rule.status:
                continue
            captions = self.captions(image)
            if rule.uncaptioned and captions:
                continue
            if pattern is not None and not any(pattern.search(c) for c in captions):
                continue
            if (rule.min_tokens or rule.max_tokens) and self.counter:
                longest = max((self.tokens(c) for c in captions), default=0)
                if longest < rule.min_tokens or rule.max_tokens and longest > rule.max_tokens:
                    continue
            found.append(image)
        return found

    def preview_replace(self, find: str, replace: str, regex: bool, images: list[str]) -> list[Change]:
        """Every caption the replacement would change, before anything is written."""
        if not find:
            raise ReviewError("Give the text to find.")
        pattern = compile_pattern(find, regex)
        changes = []
        for image in images:
            before = self.captions(image)
            try:
                after = [pattern.sub(replace if regex else lambda _: replace, c) for c in before]
            except (re.error, IndexError) as exc:
                raise ReviewError(f"The replacement cannot be used: {exc}.") from None
            if after != before:
                changes.append(Change(image, list(before), after))
        return changes

    def apply(self, changes: list[Change], undo: bool = False) -> None:
        for change in changes:
            self.set_captions(change.image, change.before if undo else change.after)

    # ---- export ---------------------------------------------------------------------------------------

    def export(self, fmt: str, out: Path, approved_only: bool, replace: bool = False) -> dict:
        """Write the dataset in `fmt` to `out` (a new or empty folder outside this one; for jsonl a .jsonl
        file, replaced only when `replace`); returns the manifest. Built aside, renamed into place."""
        import shutil

        if fmt not in EXPORT_FORMATS:
            raise ReviewError(f"Unknown export format '{fmt}': use {', '.join(EXPORT_FORMATS)}.")
        if fmt == "jsonl":
            check_file_target(out, ".jsonl", replace)
            check_file_target(out.with_suffix(".manifest.json"), ".json", replace)
        else:
            check_folder_target(out, [self.folder])
        chosen = [i for i in self.images if self.captions(i) and (not approved_only or self.status_of(i) == "approved")]
        counts = {"images": len(chosen), "captions": sum(len(self.captions(i)) for i in chosen),
                  "left_out_uncaptioned": sum(1 for i in self.images if not self.captions(i)),
                  "left_out_unapproved": sum(1 for i in self.images if self.captions(i)) - len(chosen),
                  "format": fmt, "approved_only": approved_only, "source": str(self.folder)}
        try:
            if fmt == "jsonl":
                # one item per caption: their trainer reads one caption per item, and may list an image twice
                lines = [json.dumps({"path": str(self.path(i).resolve()), "prompt": caption}, ensure_ascii=False)
                         for i in chosen for caption in self.captions(i)]
                write_text_atomic(out, "".join(line + "\n" for line in lines))
                write_json_atomic(out.with_suffix(".manifest.json"), counts)
                return counts
            with building_folder(out) as building:
                records = []
                for image in chosen:
                    target = building / image
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(self.path(image), target)
                    if fmt == "txt":
                        write_captions(target, self.captions(image))
                    else:
                        # `text` is one caption (trainers read the column as one); `captions` has them all
                        captions = self.captions(image)
                        records.append(json.dumps({"file_name": image, "text": captions[0], "captions": captions},
                                                  ensure_ascii=False))
                if fmt == "imagefolder":
                    write_text_atomic(building / "metadata.jsonl", "".join(r + "\n" for r in records))
                write_json_atomic(building / "manifest.json", counts)
        except OSError as exc:
            raise ReviewError(f"The export to {out} failed ({export_reason(exc)}).") from None
        return counts


__all__ = ["REVIEW_STATUSES", "CaptionDataset", "Change", "Filter", "ReviewError", "EXPORT_FORMATS"]
