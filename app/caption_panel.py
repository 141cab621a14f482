"""The Caption panel: open a folder, caption it with a model, and review every caption by hand, keyboard first.

The folder's data (captions, statuses, filters, replacements, export) is core.captioning.review; the state and
commands (the open folder, undoable changes, the captioner and its jobs) are app/caption_controller.py; the
image list is app/caption_list.py, the editor app/caption_editor.py, the dialogs app/caption_dialogs.py.
Captioning runs in its own worker process (core.captioning.service), apart from the generation engine,
through the shared queue widget. Every change is written at once and can be undone.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QItemSelectionModel, Qt, QThreadPool, QTimer, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QAbstractItemView, QCheckBox, QComboBox, QFileDialog, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QListView,
    QProgressBar, QPushButton, QSpinBox, QSplitter, QVBoxLayout, QWidget,
)

from core.captioning import API_KEY_VARIABLE
from core.captioning.files import split_captions
from core.captioning.review import CaptionDataset, Filter, ReviewError
from core.captioning.state import REVIEW_STATUSES
from core.captioning.styles import STYLES
from core.errors import LuminaError
from core.storage import data_dir, first_free

from . import plain_text
from .background import run_in_background
from .caption_controller import CaptionController, CaptionerChoice
from .caption_dialogs import CompareDialog, ExportDialog, FindReplaceDialog
from .caption_editor import CaptionEditor
from .caption_list import CaptionListModel
from .image_loader import ImageLoader, TrueColourThumbnails
from .image_view import ImageView
from .job_queue import JobQueueView
from .plain_text import escape, plain_label
from .settings import AppSettings

LARGE = 1024
EDITOR_LINES, EDITOR_CHARACTERS = 200, 100_000  # a longer caption file is shown in part, read-only
DEMO_SCENES = 48  # pictures in a demo folder
SERVER = "server"
# (keys, what it does): the panel's help and its menu list these
SHORTCUTS = (
    ("Alt+Down", "next image"), ("Alt+Up", "previous image"), ("Alt+N", "next unreviewed image"),
    ("Ctrl+Return", "approve and go to the next"), ("Alt+1", "approve"), ("Alt+2", "needs fixing"),
    ("Alt+3", "reject"), ("Alt+0", "back to unreviewed"), ("F2", "edit the caption"),
    ("Ctrl+R", "caption this image again"), ("Ctrl+Z / Ctrl+Shift+Z", "undo / redo"),
    ("Ctrl+H", "find and replace"), ("Ctrl+Shift+E", "export"),
)


class CaptionPanel(QWidget):
    status = Signal(str)
    train_requested = Signal(object)  # the folder: open the Train tab's wizard with it

    def __init__(self, settings: AppSettings, device: str = "auto", parent=None):
        super().__init__(parent)
        self.settings, self.device = settings, device
        self.controller = CaptionController(settings, device, lambda title, text: plain_text.ask(self, title, text),
                                            self)
        self.current: str | None = None
        self.loader = ImageLoader(self)
        self.model = CaptionListModel(self.loader, self)
        self._opened_last = False
        self._build()
        self._connect()
        self._shortcuts()
        self.show_dataset(None)
        if self.settings.caption_split is not None:
            self.splitter.restoreState(self.settings.caption_split)

    @property
    def dataset(self) -> CaptionDataset | None:
        return self.controller.dataset

    @property
    def client(self):
        return self.controller.client

    def showEvent(self, event):  # noqa: N802 (Qt naming)
        """The last folder opens when the tab is first shown, not at start-up (a big folder takes a second)."""
        super().showEvent(event)
        if not self._opened_last:
            self._opened_last = True
            recent = self.settings.caption_recent
            if self.dataset is None and recent and Path(recent[0]).is_dir():
                self.open_folder(Path(recent[0]))

    def use_lumina_model(self, model: str | None) -> None:
        """Count caption tokens with this Lumina model's tokenizer (loaded in the background, without torch)."""
        from core.captioning.tokens import lumina_token_counter

        def ready(counter):
            self.controller.set_counter(counter)
            self.editor.set_counter(counter)
            if self.current:
                self._changed(self.current)

        run_in_background(lambda: lumina_token_counter(model, slow_allowed=False), ready,
                          lambda exc: self.status.emit(f"Caption lengths cannot be counted: {exc}"))

    # ---- building --------------------------------------------------------------------------------------

    def _build(self) -> None:
        self.open_button = QPushButton("Open folder…")
        self.demo_button = QPushButton("Make a demo folder")
        self.demo_button.setToolTip(f"{DEMO_SCENES} pictures of the demo model's world, without captions, in a new "
                                    "folder of the data folder: caption them with the built-in demo captioner, "
                                    "review them, train on them")
        self.recent = QComboBox()
        self.recent.setMinimumWidth(260)
        self.recent.setToolTip("Folders opened before")
        self._fill_recent()
        self.find_button = QPushButton("Find and replace…")
        self.export_button = QPushButton("Export…")
        self.train_button = QPushButton("Train on this dataset…")
        self.train_button.setToolTip("Open the Train tab's wizard with this folder as its dataset")
        top = QHBoxLayout()
        for widget in (self.open_button, self.demo_button, self.recent, self.find_button, self.export_button,
                       self.train_button):
            top.addWidget(widget)
        top.addStretch(1)

        self.notice = plain_label()
        self.notice.setWordWrap(True)
        self.notice.setTextInteractionFlags(Qt.TextSelectableByMouse)

        self.captioner = QComboBox()
        self.captioner.setToolTip("The model that writes captions: the built-in demo captioner (flat shapes only), "
                                  "a vision-language model folder you added, or a local OpenAI-compatible server")
        self.add_captioner = QPushButton("Add model folder…")
        self.server_url = QLineEdit(self.settings.caption_server)
        self.server_url.setToolTip("Base URL of vLLM, llama.cpp's server, LM Studio or Ollama (ends in /v1)")
        self.api_key = QLineEdit(os.environ.get(API_KEY_VARIABLE) or self.settings.caption_api_key)
        self.api_key.setEchoMode(QLineEdit.Password)
        self.api_key.setPlaceholderText("API key, if the server wants one")
        self.api_key.setToolTip(f"Sent to the server only (kept in the app's settings; ${API_KEY_VARIABLE} is "
                                "used when set). Never written into captions, logs or the folder's state file.")
        self.styles = {name: QCheckBox(name) for name in STYLES}
        chosen = self.settings.caption_styles
        for name, box in self.styles.items():
            box.setChecked(name in chosen)
            box.setToolTip(STYLES[name].question + " Several styles write one line each.")
        self.mode = QComboBox()
        for label, mode in (("Skip captioned images", "skip"), ("Overwrite captions", "overwrite"),
                            ("Add new lines", "append")):
            self.mode.addItem(label, mode)
        self.scope = QComboBox()
        for label, scope in (("All images", "all"), ("Selected images", "selected"),
                             ("Images without a caption", "uncaptioned"), ("Images the filter shows", "filtered")):
            self.scope.addItem(label, scope)
        self.caption_button = QPushButton("Caption")
        self.caption_button.setToolTip("Queue a captioning job (its progress and the queue are below)")
        self._fill_captioners()
        model_row, style_row = QHBoxLayout(), QHBoxLayout()
        for widget in (QLabel("Captioner"), self.captioner, self.add_captioner, self.server_url, self.api_key):
            model_row.addWidget(widget)
        model_row.addStretch(1)
        style_row.addWidget(QLabel("Styles"))
        for box in self.styles.values():
            style_row.addWidget(box)
        for widget in (self.mode, self.scope, self.caption_button):
            style_row.addWidget(widget)
        style_row.addStretch(1)
        caption_box = QGroupBox("Caption with a model")
        caption_layout = QVBoxLayout(caption_box)
        caption_layout.addLayout(model_row)
        caption_layout.addLayout(style_row)

        self.filter_status = QComboBox()
        self.filter_status.addItem("Any status", "")
        for status in REVIEW_STATUSES:
            self.filter_status.addItem(status.capitalize(), status)
        self.filter_text = QLineEdit()
        self.filter_text.setPlaceholderText("Filter by caption text")
        self.filter_text.setClearButtonEnabled(True)
        self.filter_regex = QCheckBox("Regex")
        self.filter_min, self.filter_max = QSpinBox(), QSpinBox()
        for box, tip in ((self.filter_min, "at least this many tokens (0: any)"),
                         (self.filter_max, "at most this many tokens (0: any)")):
            box.setRange(0, 100_000)
            box.setSpecialValueText("any")
            box.setToolTip("Longest caption of the image has " + tip)
        self.filter_uncaptioned = QCheckBox("No caption")
        self.filter_count = QLabel()
        filter_row = QHBoxLayout()
        for widget in (QLabel("Show"), self.filter_status, self.filter_text, self.filter_regex, QLabel("tokens ≥"),
                       self.filter_min, QLabel("≤"), self.filter_max, self.filter_uncaptioned, self.filter_count):
            filter_row.addWidget(widget)
        self._filter_timer = QTimer(self)
        self._filter_timer.setSingleShot(True)
        self._filter_timer.setInterval(250)

        self.list = QListView()
        self.list.setModel(self.model)
        self.list.setSelectionMode(QAbstractItemView.ExtendedSelection)
        self.list.setUniformItemSizes(True)
        self.list.setIconSize(self.model.placeholder.size())
        self.list.setItemDelegate(TrueColourThumbnails(self.list))
        self.image_view = ImageView("Open a folder of images to caption and review them.")
        self.editor = CaptionEditor()
        self.image_label = QLabel()
        self.image_label.setWordWrap(True)
        self.status_buttons = {}
        status_row = QHBoxLayout()
        for status, label in (("approved", "Approve and next (Ctrl+Return)"), ("needs fixing", "Needs fixing (Alt+2)"),
                              ("rejected", "Reject (Alt+3)")):
            button = QPushButton(label)
            self.status_buttons[status] = button
            status_row.addWidget(button)
        self.regenerate_button = QPushButton("Caption again (Ctrl+R)")
        self.compare_button = QPushButton("Compare lines…")
        tools_row = QHBoxLayout()
        tools_row.addWidget(self.regenerate_button)
        tools_row.addWidget(self.compare_button)
        tools_row.addStretch(1)
        self.help = QLabel("Keys: " + " · ".join(f"<b>{keys}</b> {what}" for keys, what in SHORTCUTS))
        self.help.setWordWrap(True)
        self.help.setTextFormat(Qt.RichText)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addWidget(self.image_label)
        right_layout.addWidget(self.editor, 1)
        right_layout.addLayout(status_row)
        right_layout.addLayout(tools_row)
        right_layout.addWidget(self.help)
        self.splitter = QSplitter(Qt.Horizontal)
        self.splitter.addWidget(self.list)
        self.splitter.addWidget(self.image_view)
        self.splitter.addWidget(right)
        self.splitter.setStretchFactor(1, 2)
        self.splitter.setStretchFactor(2, 2)
        self.splitter.setSizes([240, 480, 480])

        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.queue = JobQueueView(self.client, "Captioning queue", stop_key="")
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.notice)
        layout.addWidget(caption_box)
        layout.addLayout(filter_row)
        layout.addWidget(self.splitter, 1)
        layout.addWidget(self.progress)
        layout.addWidget(self.queue)

    def _connect(self) -> None:
        self.open_button.clicked.connect(self.choose_folder)
        self.demo_button.clicked.connect(self.make_demo_folder)
        self.recent.activated.connect(lambda index: self.open_folder(Path(self.recent.itemData(index)))
                                      if self.recent.itemData(index) else None)
        self.find_button.clicked.connect(self.find_replace)
        self.export_button.clicked.connect(self.export)
        self.train_button.clicked.connect(self.train_on_dataset)
        self.add_captioner.clicked.connect(self.add_captioner_folder)
        self.captioner.currentIndexChanged.connect(self._captioner_changed)
        self.caption_button.clicked.connect(self.caption_requested)
        self.filter_status.currentIndexChanged.connect(self._filter_timer.start)
        self.filter_text.textChanged.connect(self._filter_timer.start)
        for widget in (self.filter_regex, self.filter_uncaptioned):
            widget.toggled.connect(self._filter_timer.start)
        for widget in (self.filter_min, self.filter_max):
            widget.valueChanged.connect(self._filter_timer.start)
        self._filter_timer.timeout.connect(self.apply_filter)
        self.list.selectionModel().currentChanged.connect(lambda current, _: self.show_image(current.data(Qt.UserRole)))
        self.editor.committed.connect(self.controller.edit_captions)
        self.editor.convert.connect(self.controller.convert_caption_file)
        self.status_buttons["approved"].clicked.connect(self.approve_and_next)
        self.status_buttons["needs fixing"].clicked.connect(lambda: self.set_status("needs fixing"))
        self.status_buttons["rejected"].clicked.connect(lambda: self.set_status("rejected"))
        self.regenerate_button.clicked.connect(self.regenerate)
        self.compare_button.clicked.connect(self.compare)
        self.loader.loaded.connect(self._large_loaded)
        controller = self.controller
        controller.opened.connect(self._opened)
        controller.read.connect(self._all_read)
        controller.changed.connect(self._changed)
        controller.notice.connect(self.show_notice)
        controller.status.connect(self.status)
        controller.progress.connect(self._progress)
        controller.idle.connect(lambda: self.progress.setVisible(False))

    def _shortcuts(self) -> None:
        def key(keys, slot):
            shortcut = QShortcut(QKeySequence(keys), self, slot)
            shortcut.setContext(Qt.WidgetWithChildrenShortcut)  # only while this tab is shown

        key("Alt+Down", lambda: self.move(1))
        key("Alt+Up", lambda: self.move(-1))
        key("Alt+N", self.next_unreviewed)
        for keys in ("Ctrl+Return", "Ctrl+Enter"):
            key(keys, self.approve_and_next)
        for number, status in (("1", "approved"), ("2", "needs fixing"), ("3", "rejected"), ("0", "unreviewed")):
            key(f"Alt+{number}", lambda s=status: self.set_status(s))
        key("F2", self.edit)
        key("Ctrl+R", self.regenerate)
        key("Ctrl+H", self.find_replace)
        key("Ctrl+Shift+E", self.export)

    # ---- folders -----------------------------------------------------------------------------------------

    def _fill_recent(self) -> None:
        self.recent.blockSignals(True)
        self.recent.clear()
        self.recent.addItem("Recent folders", None)
        for folder in self.settings.caption_recent:
            self.recent.addItem(folder, folder)
        self.recent.blockSignals(False)

    def choose_folder(self) -> None:
        start = (self.settings.caption_recent or [str(Path.home())])[0]
        chosen = QFileDialog.getExistingDirectory(self, "Open a folder of images", start)
        if chosen:
            self.open_folder(Path(chosen))

    def make_demo_folder(self) -> None:
        """Draw the demo's scenes without captions into a new folder (in the background) and open it."""
        from core.scenes.world import write_dataset

        datasets = data_dir() / "datasets"
        folder = datasets / first_free("demo-scenes", lambda name: (datasets / name).exists())
        self.demo_button.setEnabled(False)
        self.show_notice(f"Drawing {DEMO_SCENES} demo pictures into {folder}…")

        def done(_) -> None:
            self.demo_button.setEnabled(True)
            self.open_folder(folder)
            self.show_notice(f"{folder} holds {DEMO_SCENES} pictures without captions: choose the demo captioner "
                             "below and press Caption.")

        def failed(exc) -> None:
            self.demo_button.setEnabled(True)
            self.show_notice(f"The demo folder could not be made: {exc}", error=True)

        run_in_background(lambda: write_dataset(folder, DEMO_SCENES, seed=0, captions=False), done, failed)

    def open_folder(self, folder: Path) -> None:
        """List the folder, show the first page; every caption is read in the background (the controller)."""
        self.editor.commit()
        self.controller.open_folder(folder)

    def _opened(self, dataset: CaptionDataset) -> None:
        self._fill_recent()
        self.show_dataset(dataset)

    def _all_read(self) -> None:
        dataset = self.dataset
        self.notice.setToolTip(plain_text.tooltip("\n".join(f"{name}: {why}" for name, why in
                                                             {**dataset.broken, **dataset.unreadable}.items())))
        if self._filter().active():
            self.apply_filter()

    def show_dataset(self, dataset: CaptionDataset | None) -> None:
        writable = dataset is not None and dataset.writable
        for widget in (self.find_button, self.export_button, self.train_button, self.caption_button,
                       self.regenerate_button, self.compare_button, *self.status_buttons.values()):
            widget.setEnabled(dataset is not None)
        for widget in (self.find_button, self.caption_button, self.regenerate_button, *self.status_buttons.values()):
            widget.setEnabled(writable)
        self.show_notice("")
        self.notice.setToolTip("")
        if dataset is None:
            self.model.set_images(None, [])
            self.editor.show_captions(None, [], [], False)
            self.image_view.clear_image()
            return
        if not dataset.images:
            self.show_notice(f"No images in {dataset.folder} (png, jpg, webp, bmp, gif, tiff; sub-folders "
                             "included). Choose another folder.", error=True)
        elif not writable:
            self.show_notice(f"{dataset.folder} is read-only for you: you can look at its captions, but not change, "
                             "review or caption them. Copy the folder to change it.", error=True)
        self.apply_filter()

    def show_notice(self, text: str, error: bool = False) -> None:
        self.notice.setText(text)
        self.notice.setStyleSheet("color: #c83c3c;" if error else "")
        self.notice.setVisible(bool(text))

    # ---- the list and the current image --------------------------------------------------------------

    def _filter(self) -> Filter:
        return Filter(status=self.filter_status.currentData(), text=self.filter_text.text(),
                      regex=self.filter_regex.isChecked(), min_tokens=self.filter_min.value(),
                      max_tokens=self.filter_max.value(), uncaptioned=self.filter_uncaptioned.isChecked())

    def filtered(self) -> list[str]:
        return list(self.model.all)

    def apply_filter(self) -> None:
        if self.dataset is None:
            return
        try:
            images = self.dataset.matching(self._filter())
        except ReviewError as exc:
            self.filter_count.setText(str(exc))
            return
        keep = self.current
        self.model.set_images(self.dataset, images)
        self.filter_count.setText(f"{len(images)} of {len(self.dataset.images)} images")
        row = self.model.row_of(keep) if keep else -1
        self.select_row(row if row >= 0 else 0)
        if not images:
            self.show_image(None)

    def select_row(self, row: int) -> None:
        if not 0 <= row < len(self.model.all):
            return
        self.model.ensure_shown(row)
        index = self.model.index(row)
        self.list.selectionModel().setCurrentIndex(index, QItemSelectionModel.ClearAndSelect)
        self.list.scrollTo(index)

    def move(self, step: int) -> None:
        row = self.model.row_of(self.current) if self.current else -1
        self.select_row(max(0, min(len(self.model.all) - 1, row + step)))

    def next_unreviewed(self) -> None:
        if self.dataset is None:
            return
        start = self.model.row_of(self.current) if self.current else -1
        images = self.model.all
        for offset in range(1, len(images) + 1):
            row = (start + offset) % len(images)
            if self.dataset.status_of(images[row]) == "unreviewed":
                self.select_row(row)
                return
        self.status.emit("Every image shown has been reviewed.")

    def show_image(self, image: str | None) -> None:
        self.editor.commit()  # what was typed for the previous image is saved first
        self.current = image
        if image is None or self.dataset is None:
            self.editor.show_captions(None, [], [], False)
            self.image_view.clear_image()
            if self.dataset is not None:  # a folder is open: say why nothing is shown
                self.image_view.setText("No image matches the filter." if not self.model.all
                                        else "Select an image in the list.")
            self.image_label.setText("")
            return
        self._show_captions(image)
        self.image_label.setText(f"<b>{escape(image)}</b> · {self.dataset.status_of(image)}")
        pixmap = self.loader.get(str(self.dataset.path(image)), LARGE)
        if pixmap is not None:
            self._show_large(pixmap)
        else:
            self.image_view.clear_image()

    def _large_loaded(self, path: str, size: int) -> None:
        if size == LARGE and self.current and self.dataset and path == str(self.dataset.path(self.current)):
            self._show_large(self.loader.get(path, LARGE))

    def _show_large(self, pixmap) -> None:
        if pixmap is None or pixmap.isNull():
            self.image_view.clear_image()
            self.image_view.setText("This image cannot be read (damaged or not an image); it is skipped when "
                                    "captioning.")
        else:
            self.image_view.show_pixmap(pixmap)

    def edit(self) -> None:
        self.editor.text.setFocus()

    # ---- changes (each one undoable) -----------------------------------------------------------------

    def set_status(self, status: str, image: str | None = None) -> None:
        image = image or self.current
        if image is None or self.dataset is None or not self.dataset.writable:
            return
        self.editor.commit()
        self.controller.set_status(image, status)

    def approve_and_next(self) -> None:
        if self.current is not None:
            self.set_status("approved")
            self.move(1)

    def _changed(self, image: str, from_editor: bool = False) -> None:
        self.model.refresh(image)
        if image == self.current:
            self.image_label.setText(f"<b>{escape(image)}</b> · {self.dataset.status_of(image)}")
            if not from_editor:  # the editor already shows what it committed
                self._show_captions(image)

    def _show_captions(self, image: str) -> None:
        """The image's captions in the editor; a caption file that is not UTF-8, or longer than the editor
        holds, is shown read-only and left as it is."""
        dataset = self.dataset
        sources = dataset.sources(image)
        texts = [s["text"] for s in sources]
        held, convertible = "", False
        if image in dataset.legacy_text:
            texts, sources = split_captions(dataset.legacy_text[image]), []
            held, convertible = ("This caption file is not UTF-8 text. It is shown as decoded from Windows-1252 and "
                                 "left as it is; convert it to edit it."), True
        elif image in dataset.unreadable:
            held = f"This caption file cannot be read ({dataset.unreadable[image]}); it is left as it is."
        characters = sum(map(len, texts))
        if len(texts) > EDITOR_LINES or characters > EDITOR_CHARACTERS:
            held = (f"This caption file has {len(texts):,} lines ({characters:,} characters): too long to "
                    f"edit here. The first {EDITOR_LINES} are shown; the file is left as it is.") + \
                   (" " + held if held else "")
            texts, convertible = [t[:EDITOR_CHARACTERS // EDITOR_LINES] for t in texts[:EDITOR_LINES]], False
        self.editor.show_captions(image, texts, sources, dataset.writable, held, convertible)

    def undo(self) -> None:
        self.editor.commit()
        self.controller.undo_stack.undo()

    def redo(self) -> None:
        self.editor.commit()
        self.controller.undo_stack.redo()

    def find_replace(self) -> None:
        if self.dataset is None or not self.dataset.writable:
            return
        self.editor.commit()
        self.dataset.load_all()  # usually already read in the background
        dialog = FindReplaceDialog(self.dataset, self.filtered(), self)
        if dialog.exec() and dialog.changes:
            self.controller.replace(dialog.changes)

    def compare(self) -> None:
        if self.current is None:
            return
        self.editor.commit()
        sources = self.dataset.sources(self.current)
        if len(sources) < 2:
            self.status.emit("This image has one caption: nothing to compare.")
            return
        CompareDialog(self.current, sources, self).exec()

    def train_on_dataset(self) -> None:
        if self.dataset is not None:
            self.editor.commit()
            self.train_requested.emit(self.dataset.folder)

    def export(self) -> None:
        if self.dataset is None:
            return
        self.editor.commit()
        dialog = ExportDialog(self.dataset, self)
        if not dialog.exec():
            return
        fmt, target, approved = dialog.choice()
        replace = fmt == "jsonl" and target.is_file() and plain_text.ask(
            self, "Replace the file", f"{target} exists already. Replace it with this export?")
        dataset = self.dataset
        run_in_background(lambda: dataset.export(fmt, target, approved, replace),
                          lambda counts: self.status.emit(f"Exported {counts['images']} images, {counts['captions']} "
                                                          f"captions to {target}"),
                          lambda exc: self.show_notice(f"Export failed: {exc}", error=True))

    # ---- captioning ------------------------------------------------------------------------------------

    def _fill_captioners(self) -> None:
        self.captioner.blockSignals(True)
        self.captioner.clear()
        self.captioner.addItem("Demo captioner (built-in, flat shapes only)", None)
        for folder in self.settings.captioners:
            self.captioner.addItem(Path(folder).name, folder)
        self.captioner.addItem("Local server (OpenAI-compatible)…", SERVER)
        saved = self.settings.captioner
        index = self.captioner.findData(saved) if saved else 0
        self.captioner.setCurrentIndex(max(0, index))
        self.captioner.blockSignals(False)
        self.server_url.setVisible(self.captioner.currentData() == SERVER)
        self.api_key.setVisible(self.captioner.currentData() == SERVER)

    def add_captioner_folder(self) -> None:
        from core.captioning.adapters import model_type

        chosen = QFileDialog.getExistingDirectory(self, "A vision-language model folder (with config.json)")
        if not chosen:
            return
        try:
            model_type(Path(chosen))
        except LuminaError as exc:
            plain_text.message(self, "Not a captioning model", str(exc))
            return
        self.settings.captioners = [chosen] + [f for f in self.settings.captioners if f != chosen]
        self.settings.captioner = chosen
        self._fill_captioners()

    def _captioner_changed(self) -> None:
        self.settings.captioner = self.captioner.currentData()
        self.server_url.setVisible(self.captioner.currentData() == SERVER)
        self.api_key.setVisible(self.captioner.currentData() == SERVER)

    def captioner_choice(self) -> CaptionerChoice:
        chosen = self.captioner.currentData()
        if chosen == SERVER:
            return CaptionerChoice(server=self.server_url.text().strip(), api_key=self.api_key.text().strip())
        return CaptionerChoice(model=chosen)

    def caption_requested(self) -> None:
        if self.dataset is None:
            return
        self.editor.commit()
        styles = [name for name, box in self.styles.items() if box.isChecked()]
        if not styles:
            self.show_notice("Tick at least one caption style.", error=True)
            return
        self.settings.caption_styles = styles
        scope, mode = self.scope.currentData(), self.mode.currentData()
        images = self._scope_images(scope)
        if images is not None and not images:
            self.show_notice("No images to caption in that choice.", error=True)
            return
        if mode == "overwrite":
            count = len(images) if images is not None else len(self.dataset.images)
            if not plain_text.ask(self, "Overwrite captions",
                                  f"Replace the captions of {count} images, hand edits included?"):
                return
        self.controller.caption(self.captioner_choice(), styles, mode, images,
                                f"{', '.join(styles)} for {self._describe_scope(scope, images)}")

    def _scope_images(self, scope: str) -> list[str] | None:
        if scope == "selected":
            return [index.data(Qt.UserRole) for index in self.list.selectionModel().selectedIndexes()]
        if scope == "uncaptioned":
            return [image for image in self.dataset.images if not self.dataset.captions(image)]
        if scope == "filtered":
            return self.filtered()
        return None

    def _describe_scope(self, scope: str, images: list[str] | None) -> str:
        name = self.dataset.folder.name
        return f"{name} (all)" if images is None else f"{len(images)} images of {name} ({scope})"

    def regenerate(self) -> None:
        image = self.current
        if image is None or self.dataset is None or not self.dataset.writable:
            return
        self.editor.commit()
        if self.dataset.hand_edited(image):
            if not plain_text.ask(self, "Caption again",
                                  f"{image} has captions no captioner here wrote (typed by hand, or from the file). "
                                  "Replace them with new ones?"):
                return
        styles = [name for name, box in self.styles.items() if box.isChecked()] or ["detailed"]
        self.controller.caption(self.captioner_choice(), styles, "overwrite", [image],
                                f"{', '.join(styles)} for {image}")

    def _progress(self, done: int, total: int, eta: float) -> None:
        self.progress.setVisible(True)
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(done)
        self.progress.setFormat(f"{done}/{total} images · {int(eta) // 60}:{int(eta) % 60:02d} left")

    def stop(self) -> None:
        """Before the window closes: save what was typed, stop the captioner and the image decoders."""
        self.editor.commit()
        self.settings.caption_split = self.splitter.saveState()
        self.controller.stop()
        self.loader.stop()
        QThreadPool.globalInstance().waitForDone(5000)  # a folder's captions still being read
