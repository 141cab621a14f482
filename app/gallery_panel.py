"""Gallery: a virtualised thumbnail grid over the library, search and filters, details, trash and export.

Thumbnails are decoded off the GUI thread (app/image_loader.py) and cached.
"""

from __future__ import annotations

import time
from datetime import datetime

from PySide6.QtCore import (
    QAbstractListModel, QEvent, QFileSystemWatcher, QItemSelectionModel, QModelIndex, QPoint, QSize, Qt, QTimer,
    Signal,
)
from PySide6.QtGui import QCursor, QKeySequence, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView, QCheckBox, QComboBox, QDialog, QDialogButtonBox, QFileDialog, QFormLayout, QHBoxLayout,
    QLabel, QLineEdit, QListView, QProgressDialog, QPushButton, QSlider, QSplitter, QTextBrowser, QVBoxLayout,
    QWidget,
)

from core.errors import Cancelled, LuminaError
from core.library import Entry, Library

from .background import run_in_background
from .settings_details import details_html
from .image_loader import ImageLoader, TrueColourThumbnails
from .image_view import ImageView
from .plain_text import escape, tooltip

THUMBNAIL = 256  # decoded at most this large; the grid draws them at the size slider's value
SIZES = (64, 320, 160)  # the size slider: smallest, largest, first
DETAIL = 512
DATE_FILTERS = {"Any date": None, "Today": 1, "Last 7 days": 7, "Last 30 days": 30}


class GalleryModel(QAbstractListModel):
    """Entries are fetched a page at a time as the grid scrolls, so 20,000 images list instantly."""

    PAGE = 150

    def __init__(self, loader: ImageLoader, parent=None):
        super().__init__(parent)
        self.entries: list[Entry] = []
        self._fetch = lambda offset, limit: []
        self._more = False
        self.loader = loader
        self._rows: dict[str, int] = {}
        # Same size as a thumbnail, so the grid lays out once, before the images arrive.
        self.placeholder = QPixmap(THUMBNAIL, THUMBNAIL)
        self.placeholder.fill(Qt.gray)
        loader.loaded.connect(self._thumbnail_ready)

    def set_query(self, fetch) -> None:
        """fetch(offset, limit) -> entries; the first page is read now, the rest on demand."""
        self.beginResetModel()
        self._fetch = fetch
        self.entries = fetch(0, self.PAGE)
        self._more = len(self.entries) == self.PAGE
        self._rows = {str(e.path): row for row, e in enumerate(self.entries)}
        self.endResetModel()

    def canFetchMore(self, parent=QModelIndex()):  # noqa: N802
        return not parent.isValid() and self._more

    def fetchMore(self, parent=QModelIndex()):  # noqa: N802
        more = self._fetch(len(self.entries), self.PAGE)
        self._more = len(more) == self.PAGE
        if not more:
            return
        start = len(self.entries)
        self.beginInsertRows(QModelIndex(), start, start + len(more) - 1)
        self.entries.extend(more)
        self._rows.update({str(e.path): start + row for row, e in enumerate(more)})
        self.endInsertRows()

    def prepend(self, entry: Entry) -> None:
        """A new image at the top, without a reset: the selection and the other rows stay as they are."""
        self.beginInsertRows(QModelIndex(), 0, 0)
        self.entries.insert(0, entry)
        self._rows = {str(e.path): row for row, e in enumerate(self.entries)}
        self.endInsertRows()

    def has(self, entry: Entry) -> bool:
        return str(entry.path) in self._rows

    def replace(self, entry: Entry) -> None:
        """An entry whose state changed (a star): redrawn in place."""
        row = self._rows.get(str(entry.path))
        if row is not None:
            self.entries[row] = entry
            self.dataChanged.emit(self.index(row), self.index(row))

    def load_all(self) -> None:
        while self.canFetchMore():
            self.fetchMore()

    def rowCount(self, parent=QModelIndex()):  # noqa: N802
        return 0 if parent.isValid() else len(self.entries)

    def data(self, index, role=Qt.DisplayRole):
        entry = self.entries[index.row()]
        if role == Qt.DecorationRole:
            return self.loader.get(str(entry.path), THUMBNAIL) or self.placeholder
        if role == Qt.DisplayRole:
            star = "★ " if entry.favourite else ""
            return f"{star}{entry.prompt[:40] or '(empty prompt)'}\n{entry.model or 'unknown model'}"
        if role == Qt.ToolTipRole:
            return tooltip(entry.prompt)
        if role == Qt.UserRole:
            return entry
        return None

    def _thumbnail_ready(self, path: str, size: int) -> None:
        row = self._rows.get(path)
        if row is not None and size == THUMBNAIL:
            index = self.index(row)
            self.dataChanged.emit(index, index, [Qt.DecorationRole])


class ExportDialog(QDialog):
    def __init__(self, count: int, parent=None):
        super().__init__(parent)
        self.setWindowTitle(f"Export {count} image(s)")
        self.kind = QComboBox()
        self.kind.addItems(["Folder", "Zip archive"])
        self.path = QLineEdit()
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self._confirmed = ""  # a .zip the save dialog asked to replace
        self.strip = QCheckBox("Remove prompts and settings from the files (privacy)")
        row = QHBoxLayout()
        row.addWidget(self.path, 1)
        row.addWidget(browse)
        form = QFormLayout(self)
        form.addRow("Export as", self.kind)
        form.addRow("To", row)
        form.addRow("", self.strip)
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def _browse(self):
        if self.kind.currentIndex() == 0:
            chosen = QFileDialog.getExistingDirectory(self, "Export to folder")
        else:
            chosen = QFileDialog.getSaveFileName(self, "Export as zip", "images.zip", "Zip archives (*.zip)")[0]
            self._confirmed = chosen
        if chosen:
            self.path.setText(chosen)

    def replace_asked(self) -> bool:
        """Whether the save dialog already asked to replace the chosen .zip (it asks itself)."""
        return self._confirmed == self.target()

    def target(self) -> str:
        text = self.path.text().strip()
        if self.kind.currentIndex() == 1 and text and not text.lower().endswith(".zip"):
            text += ".zip"
        return text


class GalleryPanel(QWidget):
    use_settings = Signal(object)  # a dict: Signal(dict) converts to a QVariantMap, which overflows on seeds >= 2^63
    use_seed = Signal(object)  # an int of the full seed range (0 … 2^64 − 1): Signal(int) overflows
    status = Signal(str)

    def __init__(self, library: Library | None, parent=None):
        super().__init__(parent)
        self.library = library
        self.undo_stack: list[list[int]] = []
        self.exporting: QProgressDialog | None = None  # while an export runs
        self._shown_up_to = 0  # the newest image id the grid has taken in
        self._held: list[int] = []  # new images waiting for the pointer to leave the grid
        self._hold_timer = QTimer(self, interval=300, timeout=self._release_held)
        self.loader = ImageLoader(self)
        self.loader.loaded.connect(self._detail_ready)
        self.model = GalleryModel(self.loader, self)
        self._build()
        self._search_timer = QTimer(self, singleShot=True, interval=200, timeout=self.refresh)
        self.search.textChanged.connect(self._search_timer.start)
        self.search.installEventFilter(self)
        # Files that appear in the library folder (a command-line run) are indexed within a second.
        self._sync_timer = QTimer(self, singleShot=True, interval=500, timeout=self.pick_up_new_files)
        self.watcher = QFileSystemWatcher(self)
        if library is not None:
            self.watcher.addPath(str(library.folder))
            self.watcher.directoryChanged.connect(self._sync_timer.start)
        self.refresh()
        self.pick_up_new_files()  # and those made while the app was closed

    def stop(self) -> None:
        """Before the library closes: no more folder events, no more decodes."""
        if self.watcher.directories():
            self.watcher.removePaths(self.watcher.directories())
        self._sync_timer.stop()
        self.loader.stop()

    def eventFilter(self, watched, event):  # noqa: N802
        """Ctrl+Z in the search field undoes a delete unless the field has its own typing to undo."""
        if (watched is self.search and event.type() == QEvent.ShortcutOverride
                and event.matches(QKeySequence.Undo) and not self.search.isUndoAvailable() and self.undo_stack):
            event.ignore()  # not claimed by the field: the window's Edit → Undo delete gets it
            return True
        return super().eventFilter(watched, event)

    def _build(self) -> None:
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search prompts (Ctrl+F)")
        self.search.setClearButtonEnabled(True)
        self.model_filter = QComboBox()
        self.date_filter = QComboBox()
        self.date_filter.addItems(list(DATE_FILTERS))
        self.favourites = QCheckBox("Favourites")
        for signal in (self.model_filter.activated, self.date_filter.activated, self.favourites.toggled):
            signal.connect(lambda *_: self.refresh())
        self.count_label = QLabel()
        self.size_slider = QSlider(Qt.Horizontal)
        self.size_slider.setRange(SIZES[0], SIZES[1])
        self.size_slider.setValue(SIZES[2])
        self.size_slider.setFixedWidth(110)
        self.size_slider.setToolTip("Thumbnail size")
        self.size_slider.valueChanged.connect(self.set_thumbnail_size)
        self.held_button = QPushButton()
        self.held_button.setToolTip("New images wait while the pointer is over the grid, so nothing moves under "
                                    "it; they appear when it leaves, or now with this button")
        self.held_button.clicked.connect(lambda: (self.show_held(), self.grid.scrollToTop()))
        self.held_button.hide()
        bar = QHBoxLayout()
        bar.addWidget(self.held_button)
        bar.addWidget(self.search, 1)
        bar.addWidget(self.model_filter)
        bar.addWidget(self.date_filter)
        bar.addWidget(self.favourites)
        bar.addWidget(self.count_label)
        bar.addWidget(QLabel("Size"))
        bar.addWidget(self.size_slider)

        self.grid = QListView()
        self.grid.setViewMode(QListView.IconMode)
        self.grid.setResizeMode(QListView.Adjust)
        self.grid.setMovement(QListView.Static)
        self.grid.setUniformItemSizes(True)
        self.grid.setLayoutMode(QListView.Batched)  # lay out a big listing in slices, between events
        self.grid.setBatchSize(300)
        self.grid.setItemDelegate(TrueColourThumbnails(self.grid))
        self.set_thumbnail_size(SIZES[2])
        self.grid.setSelectionMode(QAbstractItemView.ExtendedSelection)
        self.grid.setModel(self.model)
        self.grid.selectionModel().selectionChanged.connect(self._show_details)

        self.detail_image = ImageView("Select an image")
        self.details = QTextBrowser()
        actions = QHBoxLayout()
        buttons = {}
        for label, slot, tip in (
            ("★ Star", self.toggle_favourite, "Mark or unmark as favourite"),
            ("Use settings", self._use_settings, "Copy every setting to the Generate panel"),
            ("Use seed", self._use_seed, "Copy only the seed to the Generate panel"),
            ("Delete", self.delete_selected, "Move to the trash (Ctrl+Z brings it back)"),
            ("Export…", self.export_dialog, "Copy to a folder or a zip, with a metadata.jsonl manifest"),
        ):
            button = QPushButton(label)
            button.setToolTip(tip)
            button.clicked.connect(slot)
            actions.addWidget(button)
            buttons[label] = button
        self.star_button = buttons["★ Star"]
        self.action_buttons = list(buttons.values())  # each acts on the selection: off while there is none
        for button in self.action_buttons:
            button.setEnabled(False)
        self.model.modelReset.connect(self._show_details)  # a reset drops the selection without a signal
        side = QWidget()
        side_layout = QVBoxLayout(side)
        side_layout.addWidget(self.detail_image, 1)
        side_layout.addWidget(self.details, 1)
        side_layout.addLayout(actions)

        self.splitter = QSplitter()
        self.splitter.addWidget(self.grid)
        self.splitter.addWidget(side)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 2)
        self.splitter.setSizes([760, 480])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addLayout(bar)
        layout.addWidget(self.splitter, 1)

    # ---- listing ------------------------------------------------------------------------------------

    def refresh(self, select_ids: list[int] | None = None, select_row: int | None = None) -> None:
        """List the library again. The selection stays on the images it had that are still listed, else goes
        to `select_ids` (images brought back), else to row `select_row` (the image after a deleted one)."""
        if self.library is None:
            self.count_label.setText("No library")
            return
        keep = select_ids if select_ids is not None else [e.id for e in self.selected()]
        self._fill_model_filter()
        filters = self._filters()
        self._shown_up_to = self.library.last_id()
        self._held = []  # the new listing has them
        self._hold_timer.stop()
        self.held_button.hide()
        self.model.set_query(lambda offset, limit: self.library.search(**filters, limit=limit, offset=offset))
        self.count_label.setText(f"{self.library.count_matching(**filters)} image(s)")
        self._reselect(keep, select_row)
        self._show_details()

    def _reselect(self, ids: list[int], row: int | None) -> None:
        wanted = set(ids)
        rows = [r for r, entry in enumerate(self.model.entries) if entry.id in wanted]
        if not rows and row is not None and self.model.rowCount():
            rows = [min(row, self.model.rowCount() - 1)]
        selection = self.grid.selectionModel()
        for number, r in enumerate(rows):
            index = self.model.index(r)
            selection.select(index, QItemSelectionModel.Select if number else QItemSelectionModel.ClearAndSelect)
            if not number:
                selection.setCurrentIndex(index, QItemSelectionModel.NoUpdate)
                self.grid.scrollTo(index)

    def set_thumbnail_size(self, size: int) -> None:
        """Cells fit the thumbnail and its two label lines (prompt, model), whatever the slider says."""
        line = self.grid.fontMetrics().lineSpacing()
        self.grid.setIconSize(QSize(size, size))
        self.grid.setGridSize(QSize(size + 16, size + 2 * line + 14))

    def _fill_model_filter(self) -> None:
        current_model = self.model_filter.currentData()
        self.model_filter.blockSignals(True)
        self.model_filter.clear()
        self.model_filter.addItem("All models", None)
        for key, name in self.library.models():  # one entry per model identity (its weights' hash)
            self.model_filter.addItem(name, key)
        self.model_filter.setCurrentIndex(max(0, self.model_filter.findData(current_model)))
        self.model_filter.blockSignals(False)

    def _filters(self) -> dict:
        days = DATE_FILTERS[self.date_filter.currentText()]
        return dict(text=self.search.text(), model=self.model_filter.currentData(),
                    favourites_only=self.favourites.isChecked(), since=time.time() - days * 86400 if days else None)

    def add_image(self, path: str) -> None:
        if self.library is None:
            return
        try:
            self.show_new([self.library.add(path)])
        except LuminaError as exc:
            self.status.emit(f"Could not add {path} to the library: {exc}")

    def pick_up_new_files(self) -> None:
        """Show images another process (the command line) wrote into the library folder, indexed or not."""
        if self.library is not None and not self.library.needs_rebuild:  # a rebuild reads every file anyway
            self.library.sync()
            self.show_new(self.library.ids_after(self._shown_up_to))

    def show_new(self, ids: list[int]) -> None:
        """New images appear at the top when they match the filters; the grid is not reset, the selection stays,
        and a grid scrolled away from the top stays on the images it showed. While the pointer is over the grid
        they wait (a button says how many), so nothing moves under it: any insert reflows a flow grid."""
        if not ids:
            return
        self._shown_up_to = max(self._shown_up_to, *ids)
        if self.pointer_over_grid():
            self._held += ids
            self.held_button.setText(f"↑ {len(self._held)} new image(s)")
            self.held_button.show()
            self._hold_timer.start()
            return
        self._insert(ids)

    def pointer_over_grid(self) -> bool:
        viewport = self.grid.viewport()
        return viewport.isVisible() and viewport.rect().contains(viewport.mapFromGlobal(QCursor.pos()))

    def show_held(self) -> None:
        """The images that waited while the pointer was over the grid."""
        held, self._held = self._held, []
        self._hold_timer.stop()
        self.held_button.hide()
        self._insert(held)

    def _release_held(self) -> None:
        if not self.pointer_over_grid():
            self.show_held()

    def _insert(self, ids: list[int]) -> None:
        if not ids:
            return
        filters = self._filters()
        newest = self.library.search(**filters, limit=len(ids))
        fresh = [e for e in newest if e.id in ids and not self.model.has(e)]
        anchor = self.grid.indexAt(QPoint(8, 8)) if self.grid.verticalScrollBar().value() > 0 else QModelIndex()
        for entry in reversed(fresh):
            self.model.prepend(entry)
        if anchor.isValid():
            self.grid.scrollTo(self.model.index(anchor.row() + len(fresh)), QAbstractItemView.PositionAtTop)
        self.count_label.setText(f"{self.library.count_matching(**filters)} image(s)")
        if any((e.model or e.model_hash) and self.model_filter.findData(e.model_key) < 0 for e in fresh):
            self._fill_model_filter()

    def select_all(self) -> None:
        self.model.load_all()
        self.grid.selectAll()

    def selected(self) -> list[Entry]:
        return [index.data(Qt.UserRole) for index in self.grid.selectionModel().selectedIndexes()]

    def select_row(self, row: int) -> None:
        self.grid.setCurrentIndex(self.model.index(row))

    def _show_details(self, *_):
        entries = self.selected()
        starred = bool(entries) and all(e.favourite for e in entries)
        self.star_button.setText("☆ Unstar" if starred else "★ Star")
        for button in self.action_buttons:
            button.setEnabled(bool(entries))
        if not entries:
            self.detail_image.clear_image()
            self.details.clear()
            return
        entry = entries[0]
        pixmap = self.loader.get(str(entry.path), DETAIL)
        if pixmap is not None:
            self.detail_image.show_pixmap(pixmap)
        if len(entries) > 1:
            self.details.setHtml(f"<b>{len(entries)} images selected.</b> Star, Delete and Export act on all of them; "
                                 "Use settings and Use seed take the first, shown here.<br><br>"
                                 + "<br>".join(escape(e.prompt[:80] or "(empty prompt)") for e in entries[:12])
                                 + ("<br>…" if len(entries) > 12 else ""))
            return
        created = datetime.fromtimestamp(entry.created).strftime("%Y-%m-%d %H:%M")
        self.details.setHtml(details_html(entry.settings, [("Favourite", "★ yes" if entry.favourite else "no"),
                                                           ("Model", entry.model), ("Created", created),
                                                           ("File", entry.path.name)]))

    def _detail_ready(self, path: str, size: int) -> None:
        entries = self.selected()
        if size == DETAIL and entries and str(entries[0].path) == path:
            self.detail_image.show_pixmap(self.loader.cache[(path, size)])

    # ---- actions ------------------------------------------------------------------------------------

    def toggle_favourite(self) -> None:
        """Star the selection (or unstar it when all of it is starred), in place: the selection stays."""
        entries = self.selected()
        star = not all(e.favourite for e in entries)
        for entry in entries:
            self.library.set_favourite(entry.id, star)
            self.model.replace(self.library.get(entry.id))
        if self.favourites.isChecked() and not star:
            self.refresh()  # unstarred images leave a favourites-only listing
        self._show_details()

    def delete_selected(self) -> None:
        ids = [e.id for e in self.selected()]
        if not ids:
            return
        first_row = min(index.row() for index in self.grid.selectionModel().selectedIndexes())
        outcome = self.library.trash(ids)
        if outcome.moved:
            self.undo_stack.append(outcome.moved)
        self.status.emit(" ".join([f"Moved {len(outcome.moved)} image(s) to the trash. Ctrl+Z brings them back.",
                                   *outcome.problems]))
        self.refresh(select_ids=[], select_row=first_row)  # the image after the deleted ones

    def undo_delete(self) -> None:
        if self.undo_stack:
            outcome = self.library.restore(self.undo_stack.pop())
            self.status.emit(" ".join([f"Restored {len(outcome.moved)} image(s).", *outcome.problems]))
            self.refresh(select_ids=outcome.moved)

    def empty_trash(self) -> int:
        removed = self.library.empty_trash()
        self.undo_stack.clear()
        self.status.emit(f"Deleted {removed} image(s) for good.")
        return removed

    def export_dialog(self) -> None:
        entries = self.selected()
        if not entries:
            self.status.emit("Select the images to export first.")
            return
        dialog = ExportDialog(len(entries), self)
        if dialog.exec() == QDialog.Accepted and dialog.target():
            self.export_selection(dialog.target(), dialog.strip.isChecked(), replace=dialog.replace_asked())

    def export_selection(self, target: str, strip_metadata: bool, replace: bool = False) -> None:
        """Export in the background with a progress dialog and Cancel (nothing is left behind when cancelled).
        `replace`: an existing .zip may be replaced (the save dialog asked)."""
        ids = [e.id for e in self.selected()]
        try:
            steps = self.library.export_steps(ids, target, strip_metadata, replace)  # checks the target first
        except LuminaError as exc:
            self.status.emit(str(exc))
            return
        progress = QProgressDialog(f"Exporting {len(ids)} image(s)…", "Cancel", 0, len(ids), self)
        progress.setWindowTitle("Export")
        progress.setMinimumDuration(300)
        progress.setValue(0)
        self.exporting = progress

        def finished(message: str) -> None:
            progress.reset()
            self.exporting = None
            self.status.emit(message)

        run_in_background(lambda: steps,
                          lambda out: finished(f"Exported {len(ids)} image(s) to {out}"),
                          lambda exc: finished("Export cancelled; nothing was written." if isinstance(exc, Cancelled)
                                               else str(exc) if isinstance(exc, LuminaError) else f"Export failed: {exc}"),
                          on_progress=lambda step: progress.setValue(step[0]),
                          should_stop=progress.wasCanceled)

    def _use_settings(self) -> None:
        entries = self.selected()
        if entries:
            self.use_settings.emit(entries[0].settings)

    def _use_seed(self) -> None:
        entries = self.selected()
        if entries and entries[0].seed is not None:
            self.use_seed.emit(entries[0].seed)

