"""A captioning job over a folder: which images, in which order, and what happens to each.

Modes: `skip` leaves every image that already has a caption (the default: a rerun after a crash continues
where it stopped), `overwrite` replaces the `.txt`, `append` adds the new lines after the old ones. Each
style writes one line (one alternative caption: the trainer draws one line per use). An unfinished
overwrite or append run is resumed by a rerun with the same settings (the state file knows what it did).
After every image its `.txt` is written atomically and its provenance recorded, so a kill loses at most the
images in flight. A bad image is that image's error, listed at the end; a read-only folder or a full disk
stops the job with one message.
"""

from __future__ import annotations

import errno
import hashlib
import os
import sqlite3
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .state import STATE_FILE, CaptionState, damaged_state_message
from ..datasets import list_images
from .files import read_captions, sidecar
from ..errors import Cancelled, LuminaError
from ..images import ImageProblem, open_rgb
from ..generation.prompts import MAX_TOKENS
from ..storage import folder_writable, human_size
from .messages import MAX_SIDE, ImageOutcome, Summary
from .repetition import cut_repetition
from .styles import prompts_for

MODES = ("skip", "overwrite", "append")


class CaptionError(LuminaError):
    """The job cannot run or go on (bad settings, a read-only folder, a full disk)."""


@dataclass
class CaptionSettings:
    folder: str
    styles: list[str] = field(default_factory=lambda: ["detailed"])
    custom_prompt: str = ""  # a question template instead of the styles ({name}, {folder}, {caption})
    system_prompt: str = ""  # instead of the styles' own
    prefix: str = ""
    suffix: str = ""
    mode: str = "skip"
    recursive: bool = False
    batch: int = 8
    max_tokens: int | None = None  # default: the model's (its lumina_captioner.json) or 512
    sampling: dict | None = None  # default: the model's, else OmniCaptioner's
    images: list[str] | None = None  # only these (paths relative to the folder); None: all

    def check(self) -> None:
        if self.mode not in MODES:
            raise CaptionError(f"Unknown mode '{self.mode}': use skip, overwrite or append.")
        if self.batch < 1:
            raise CaptionError("The batch size must be at least 1.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise CaptionError("The caption length limit must be at least 1 token.")
        try:
            prompts_for(self.styles, self.custom_prompt, self.system_prompt, self.prefix, self.suffix)
        except ValueError as exc:
            raise CaptionError(str(exc)) from None




def check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise CaptionError(f"{folder} is not a folder.")
    if not folder_writable(folder):
        raise CaptionError(f"Captions cannot be written in {folder}: the folder is read-only for you. Copy the "
                           "images to a folder you can write to.")


class CaptionRun:
    """One job: `plan()` lists the images to do, `run()` captions them with `captioner` (a local model's
    adapter or a ServerCaptioner), calling `on_result(outcome)` per image."""

    def __init__(self, settings: CaptionSettings, captioner, counter=None):
        settings.check()
        self.settings = settings
        self.folder = Path(settings.folder).expanduser()
        self.captioner = captioner
        self.counter = counter  # counts a caption's Gemma tokens for the Lumina model (None: not counted)
        self.prompts = prompts_for(settings.styles, settings.custom_prompt, settings.system_prompt,
                                   settings.prefix, settings.suffix)
        if not captioner.follows_questions and len(self.prompts) > 1:
            self.prompts = self.prompts[:1]  # it writes one kind of caption whatever it is asked
        self.source = captioner.name

    def identity(self) -> dict:
        """What makes two runs the same run (a rerun of it resumes it): settings, and which images."""
        s = self.settings
        images = hashlib.sha256("\n".join(sorted(s.images)).encode()).hexdigest() if s.images is not None else None
        return {"source": self.source, "prompts": [asdict(p) for p in self.prompts], "mode": s.mode,
                "max_tokens": s.max_tokens, "sampling": s.sampling, "images": images}

    def caption_settings(self, prompt) -> dict:
        """What the state file keeps with each caption: how it was asked for."""
        return {"prompt": asdict(prompt), "max_tokens": self.settings.max_tokens, "sampling": self.settings.sampling}

    def all_images(self) -> list[Path]:
        if self.settings.images is not None:
            return [self.folder / name for name in self.settings.images]
        return list_images(self.folder, self.settings.recursive)

    def plan(self, done: set[str] = frozenset(), share=None) -> tuple[list[Path], int]:
        """The images still to caption, and how many are left alone. `share(images)` picks this process's
        part of the whole listing (several GPUs) before anything is skipped, so every process splits the
        same list however far the others have got."""
        todo, skipped = [], 0
        skip_captioned = self.settings.mode == "skip"
        images = self.all_images()
        for image in share(images) if share is not None else images:
            if skip_captioned and _has_caption(image) or done and self._relative(image) in done:
                skipped += 1
            else:
                todo.append(image)
        return todo, skipped

    def _relative(self, image: Path) -> str:
        return image.relative_to(self.folder).as_posix()

    def run(self, on_result=None, on_progress=None, should_stop=lambda: False, share=None) -> Summary:
        """Caption the planned images. `share(images)` picks this process's part (several GPUs)."""
        check_folder(self.folder)
        started = time.perf_counter()
        try:
            state = CaptionState(self.folder)
        except sqlite3.Error as exc:
            raise self._state_error(exc) from None
        try:
            if hasattr(self.captioner, "watch"):  # a server's requests in flight end at Stop
                self.captioner.watch(should_stop)
            key, done = state.begin_run(self.identity())
            done |= self._written_before_a_kill(state, key)
            todo, skipped = self.plan(done, share)
            tally = {"skipped": skipped, "captioned": 0, "downscaled": 0, "repeated": 0, "over_limit": 0,
                     "failed": [], "warnings": [], "stopped": False}
            if state.recovered is not None:
                tally["warnings"].append(damaged_state_message(state.recovered))
            size = self.settings.batch
            for start in range(0, len(todo), size):
                if should_stop():
                    tally["stopped"] = True
                    break
                try:
                    outcomes = self._batch(todo[start:start + size])
                except Cancelled:  # Stop, while a server request was in flight: nothing of this batch was written
                    tally["stopped"] = True
                    break
                for outcome in outcomes:
                    if not outcome.error:
                        outcome = self._write(state, key, outcome)
                    if outcome.error:
                        tally["failed"].append(f"{outcome.image}: {outcome.error}")
                    else:
                        tally["captioned"] += 1
                        tally["downscaled"] += outcome.downscaled
                        if outcome.repeated:
                            state.set_status(self.folder / outcome.image, "needs fixing")
                            tally["repeated"] += 1
                        tally["over_limit"] += sum(1 for w in outcome.written if (w["tokens"] or 0) > MAX_TOKENS)
                    if on_result is not None:
                        on_result(outcome)
                if on_progress is not None:
                    done_count = min(start + size, len(todo))
                    elapsed = time.perf_counter() - started
                    on_progress(done_count, len(todo), elapsed / done_count * (len(todo) - done_count))
            if not tally["stopped"]:
                state.finish_run(key)
            tally["warnings"].extend(getattr(self.captioner, "notes", []))  # e.g. fields a server refused
            return Summary(**tally, seconds=time.perf_counter() - started)
        except sqlite3.Error as exc:
            raise self._state_error(exc) from None
        finally:
            state.close()

    def _state_error(self, exc: Exception) -> CaptionError:
        if "full" in str(exc) or _nearly_full(self.folder):  # SQLite often says "disk I/O error" then
            return self._full_disk()
        return CaptionError(f"The folder's caption state file {STATE_FILE} cannot be used ({exc}). Captions "
                            "already written are kept; move the file aside to start its record afresh.")

    def _full_disk(self) -> CaptionError:
        return CaptionError(f"The disk holding {self.folder} is full ({_free(self.folder)} free): the captions "
                            "written so far are kept. Free some space and run again to continue.")

    def _batch(self, images: list[Path]) -> list[ImageOutcome]:
        errors = {index: "" for index in range(len(images))}
        downscaled, repeated = set(), set()
        pictures, old = {}, {}
        for index, image in enumerate(images):
            try:
                old[index] = read_captions(image)
                pictures[index] = open_rgb(image, MAX_SIDE)
                if max(pictures[index].info["original_size"]) > MAX_SIDE:
                    downscaled.add(index)
            except ImageProblem as exc:
                errors[index] = str(exc)
            except (OSError, UnicodeDecodeError) as exc:
                errors[index] = f"its caption file cannot be read ({exc})"
        ready = list(pictures)
        lines = {index: [] for index in ready}
        for prompt in self.prompts:
            if not ready:
                break
            questions = [prompt.question_for(images[i].stem, self.folder.name, (old[i] or [""])[0]) for i in ready]
            answers = self.captioner.caption([pictures[i] for i in ready], questions, prompt.system,
                                             self.settings.sampling, self.settings.max_tokens)
            for index, answer in zip(ready, answers):
                looped = False
                if not isinstance(answer, Exception):
                    answer, looped = cut_repetition(answer)  # before the prefix and suffix are added
                text = "" if isinstance(answer, Exception) else prompt.finish(answer)
                if looped:
                    repeated.add(index)
                if not text:
                    empty = "the model gave an empty caption"
                    errors[index] = str(answer) if isinstance(answer, Exception) else empty
                else:
                    lines[index].append({"text": text, "style": prompt.style, "source": self.source,
                                         "settings": self.caption_settings(prompt), "tokens": self._tokens(text)})
            ready = [i for i in ready if not errors[i]]
        return [ImageOutcome(self._relative(image), written=lines[index] if index in ready else [],
                             error=errors[index], downscaled=index in downscaled, repeated=index in repeated)
                for index, image in enumerate(images)]

    def _write(self, state: CaptionState, key: str, outcome: ImageOutcome) -> ImageOutcome:
        """Write an image's new captions: the .txt as it is now (another run or the app may have changed it
        while the model worked) with the new lines added (append) or in place of the old ones. Returns the
        outcome with the captions the file holds now, or with why it could not be written."""
        image = self.folder / outcome.image
        new = [w["text"] for w in outcome.written]
        append = self.settings.mode != "overwrite"  # skip: a caption another writer added meanwhile is kept
        try:
            captions = state.update_captions(
                key, image, outcome.written, lambda current: [c for c in current if c not in new] + new if append
                else new)
            return replace(outcome, captions=captions)
        except UnicodeDecodeError:
            error = f"its caption file {sidecar(image).name} is not UTF-8 text; it is left as it is"
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise self._full_disk() from None
            error = f"{sidecar(image).name} cannot be written ({exc.strerror or exc})"
        return replace(outcome, error=error, captions=[], written=[])

    def _written_before_a_kill(self, state: CaptionState, key: str) -> set[str]:
        """Images this run wrote but did not mark done (killed in between): their lines are in the .txt, so
        they count as done and are not captioned, and added, again."""
        found = set()
        for image, texts in state.written_before(key).items():
            try:
                if texts & set(read_captions(self.folder / image)):
                    state.mark_done(key, self.folder / image)
                    found.add(image)
            except (OSError, UnicodeDecodeError):
                continue
        return found

    def _tokens(self, text: str) -> int | None:
        return self.counter(text) if self.counter is not None else None


def _has_caption(image: Path) -> bool:
    """A non-blank .txt beside it. One stat per image; only files of a few bytes are read (they may be blank)."""
    try:
        size = os.stat(os.path.splitext(image)[0] + ".txt").st_size
        return size > 8 or size > 0 and bool(read_captions(image))
    except FileNotFoundError:
        return False
    except (OSError, UnicodeDecodeError):
        return True  # an unreadable caption is not overwritten by "skip"


def _nearly_full(folder: Path) -> bool:
    import shutil

    try:
        return shutil.disk_usage(folder).free < 1024 * 1024
    except OSError:
        return False


def _free(folder: Path) -> str:
    import shutil

    try:
        return human_size(shutil.disk_usage(folder).free)
    except OSError:
        return "no space"
