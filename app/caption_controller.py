"""The Caption tab's state and commands, without widgets: the open folder, its undoable changes, and the
captioner with its jobs. caption_panel.py draws this and turns clicks and keys into these calls; it tells the
panel what happened through signals, so a test can drive it without a window.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QUndoCommand, QUndoStack

from core.captioning import API_KEY_VARIABLE, is_loopback
from core.captioning.messages import CaptionFolder, ImageOutcome, Summary
from core.captioning.review import CaptionDataset, Change, FolderRead
from core.captioning.service import SERVICE, CaptionerOptions
from core.captioning.state import damaged_state_message
from core.errors import LuminaError

from .background import BackgroundTask
from .settings import AppSettings
from .worker_client import WorkerClient

RECENT = 8  # folders kept in the Recent list


@dataclass(frozen=True)
class CaptionerChoice:
    """The captioner the person chose: the demo (no model), a model folder, or a server at `server`."""
    model: str | None = None
    server: str | None = None
    api_key: str = field(default="", repr=False)  # never in a log or a traceback


class _Change(QUndoCommand):
    def __init__(self, text: str, apply):
        super().__init__(text)
        self.apply = apply

    def redo(self):
        self.apply(True)

    def undo(self):
        self.apply(False)


class CaptionController(QObject):
    opened = Signal(object)  # the CaptionDataset now open
    read = Signal()  # every caption of the open folder is read now (filters and find & replace see them all)
    changed = Signal(str, bool)  # an image whose captions or status changed; True when the editor wrote it
    notice = Signal(str, bool)  # a message for the notice line, and whether it is an error
    status = Signal(str)  # a passing message for the status bar
    progress = Signal(int, int, float)  # captioning: images done, images in the job, seconds left
    idle = Signal()  # no captioning job runs or waits

    def __init__(self, settings: AppSettings, device: str, ask, parent=None):
        """ask(title, question) -> bool: the person's answer (the panel shows a dialog)."""
        super().__init__(parent)
        self.settings, self.device, self.ask = settings, device, ask
        self.dataset: CaptionDataset | None = None
        self.counter = None  # the Lumina tokenizer's token counter, once loaded
        self.client = WorkerClient(SERVICE, "lumina-captioner", self)
        self.undo_stack = QUndoStack(self)
        self.reading = BackgroundTask(self)  # the open folder's captions, all of them
        self._options: CaptionerOptions | None = None
        self.client.progress.connect(lambda event: self.progress.emit(event.data.step, event.data.total,
                                                                      event.data.eta))
        self.client.result.connect(self._result)
        self.client.finished.connect(self._finished)
        self.client.load_error.connect(lambda message: self.notice.emit(
            f"The captioner could not be loaded: {message}", True))
        self.client.crashed.connect(lambda message: self.notice.emit(message, True))
        self.client.ready.connect(lambda info: self.status.emit(f"Captioner ready: {info.get('captioner')}"))

    # ---- the folder ----------------------------------------------------------------------------------

    def open_folder(self, folder: Path) -> bool:
        """List the folder (fast: no image is decoded), then read every caption in the background."""
        if not folder.is_dir():
            self.notice.emit(f"{folder} is not a folder (any more).", True)
            return False
        try:
            dataset = CaptionDataset(folder, counter=self.counter)
        except (LuminaError, OSError, sqlite3.Error) as exc:
            self.notice.emit(f"{folder} cannot be opened: {exc}", True)
            return False
        self.reading.stop()  # the folder before: its captions are no longer wanted
        if self.dataset is not None:
            self.dataset.close()
        self.settings.caption_recent = [str(folder)] + [f for f in self.settings.caption_recent
                                                        if f != str(folder)][:RECENT - 1]
        self.undo_stack.clear()
        self.dataset = dataset
        self.opened.emit(dataset)
        if dataset.state is not None and dataset.state.recovered is not None:
            self.notice.emit(damaged_state_message(dataset.state.recovered), True)
        self.reading.start(dataset.read_all, self._all_read,
                           lambda exc: self.notice.emit(f"Captions could not all be read: {exc}", True))
        return True

    def _all_read(self, found: FolderRead) -> None:
        dataset = self.dataset
        dataset.merge(found)
        problems = []
        if dataset.broken:
            problems.append(f"{len(dataset.broken)} images cannot be read (skipped when captioning): "
                            + "; ".join(f"{name} ({why})" for name, why in list(dataset.broken.items())[:5])
                            + (" …" if len(dataset.broken) > 5 else ""))
        if dataset.unreadable:
            problems.append(f"{len(dataset.unreadable)} caption files cannot be read (shown empty, left as they "
                            f"are): {', '.join(list(dataset.unreadable)[:5])}")
        if problems:
            self.notice.emit(" ".join(problems), True)
        self.read.emit()

    def set_counter(self, counter) -> None:
        self.counter = counter
        if self.dataset is not None:
            self.dataset.set_counter(counter)

    # ---- changes, each one undoable ------------------------------------------------------------------

    def _push(self, text: str, apply) -> None:
        try:
            self.undo_stack.push(_Change(text, apply))
        except (LuminaError, OSError) as exc:
            self.notice.emit(f"Not saved: {exc}", True)

    def edit_captions(self, image: str, lines: list[str]) -> None:
        before = list(self.dataset.captions(image))

        def apply(forward: bool):
            self.dataset.set_captions(image, lines if forward else before)
            self.changed.emit(image, forward)

        self._push(f"edit the caption of {image}", apply)

    def set_status(self, image: str, status: str) -> None:
        before = self.dataset.status_of(image)

        def apply(forward: bool):
            self.dataset.set_status(image, status if forward else before)
            self.changed.emit(image, False)

        self._push(f"mark {image} {status}", apply)

    def replace(self, changes: list[Change]) -> None:
        def apply(forward: bool):
            self.dataset.apply(changes, undo=not forward)
            for change in changes:
                self.changed.emit(change.image, False)

        self._push(f"replace in {len(changes)} captions", apply)
        self.status.emit(f"Replaced in {len(changes)} images (Ctrl+Z undoes all of it).")

    def convert_caption_file(self, image: str) -> None:
        try:
            self.dataset.convert_to_utf8(image)
        except (LuminaError, OSError) as exc:
            self.notice.emit(f"Not converted: {exc}", True)
            return
        self.status.emit(f"Converted the caption file of {image} to UTF-8.")
        self.changed.emit(image, False)

    # ---- captioning ----------------------------------------------------------------------------------

    def caption(self, choice: CaptionerChoice, styles: list[str], mode: str, images: list[str] | None,
                label: str) -> bool:
        """Queue a captioning job for the open folder (`images`: these only, None: all). False when the
        person did not allow sending the images to a server elsewhere."""
        if not self._may_send_images(choice):
            return False
        options = self._options_for(choice)
        if options != self._options or self.client.worker is None:
            self._options = options
            self.client.start(options)
        job = {"folder": str(self.dataset.folder), "styles": styles, "mode": mode, "recursive": True,
               "images": images}
        self.client.submit(CaptionFolder(job), label)
        self.status.emit(f"Queued captioning: {label}")
        return True

    def _options_for(self, choice: CaptionerChoice) -> CaptionerOptions:
        if choice.server is None:
            return CaptionerOptions(model=choice.model, device=self.device)
        self.settings.caption_server = choice.server
        if choice.api_key != os.environ.get(API_KEY_VARIABLE, ""):  # a key from the environment is not stored
            self.settings.caption_api_key = choice.api_key
        return CaptionerOptions(server=choice.server, api_key=choice.api_key or None, device=self.device)

    def _may_send_images(self, choice: CaptionerChoice) -> bool:
        """A server that is not this computer gets the images only after the person said yes (once per host)."""
        if choice.server is None or is_loopback(choice.server):
            return True
        host = urlparse(choice.server).hostname or choice.server
        allowed = self.settings.caption_remote_hosts
        if host in allowed:
            return True
        if not self.ask("Send images to another computer?", f"{host} is not this computer: every image to "
                        "caption is sent to it over the network. Send them?"):
            return False
        self.settings.caption_remote_hosts = allowed + [host]
        return True

    def _result(self, event) -> None:
        data = event.data
        if isinstance(data, Summary):
            text = (f"Captioning finished: {data.captioned} captioned, {data.skipped} skipped, "
                    f"{len(data.failed)} failed.")
            if data.repeated:
                text += (f" {data.repeated} captions repeated themselves: cut, and marked ✎ needs fixing "
                         "(filter by it to review them).")
            if data.downscaled:
                text += f" {data.downscaled} large images were scaled down for the captioner."
            self.status.emit(text)
            if data.warnings:
                self.notice.emit(" ".join(data.warnings), True)
            if data.failed:
                self.notice.emit(text + " Not captioned: " + "; ".join(data.failed[:10])
                                 + (" …" if len(data.failed) > 10 else ""), True)
        elif isinstance(data, ImageOutcome) and self.dataset is not None:
            self.dataset.forget(data.image)  # the worker wrote its .txt: read it again when shown
            if not data.error:
                self.changed.emit(data.image, False)

    def _finished(self, job_id: int, outcome: str, message: str) -> None:
        if not self.client.busy:
            self.idle.emit()
        if outcome == "error":
            self.notice.emit(f"Captioning stopped: {message}", True)

    def stop(self) -> None:
        """Before the window closes: stop the background read and the captioner, close the folder's state."""
        self.reading.stop()
        self.client.stop()
        if self.dataset is not None:
            self.dataset.close()
