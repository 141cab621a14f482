"""Compare checkpoints, in the monitor: `lumina-studio compare RUN --json` in a process of its own (the app never
imports torch; Stop keeps the images drawn so far), then the grid it wrote: a row per sample prompt, a column
per model (the base model and each checkpoint, the same seeds), each column's validation loss and prompt
alignment under its name. A click on an image enlarges it with its settings."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QProcess, QSize, Qt
from PySide6.QtGui import QIcon, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView, QDialog, QDialogButtonBox, QProgressBar, QTableWidget, QTableWidgetItem, QVBoxLayout,
)

from core.storage import read_json
from trainer.compare import best_column, column_notes
from trainer.run_folder import RunFolder

from .plain_text import plain_label, tooltip

CELL = 160  # pixels per image in the grid


def cell_icon(pixmap: QPixmap) -> QIcon:
    """The image filling its cell; a small one (the demo's 64 px) enlarged pixel by pixel, so it stays sharp."""
    mode = Qt.FastTransformation if max(pixmap.width(), pixmap.height()) < CELL else Qt.SmoothTransformation
    return QIcon(pixmap.scaled(CELL, CELL, Qt.KeepAspectRatio, mode))


def column_header(column: dict, best: bool = False) -> str:
    return "\n".join([column["label"], *column_notes(column, best)])


class CompareDialog(QDialog):
    def __init__(self, run: RunFolder, loader, enlarge: Callable[[Path], None], parent=None):
        super().__init__(parent)
        self.run, self.loader, self.enlarge = run, loader, enlarge
        self.folder = run.path / "compare"
        self.setWindowTitle(f"Compare checkpoints of {run.path.name}")
        self.process: QProcess | None = None
        self.grid = QTableWidget()
        self.grid.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.grid.setIconSize(QSize(CELL, CELL))
        self.grid.verticalHeader().setDefaultSectionSize(CELL + 8)
        self.grid.horizontalHeader().setDefaultSectionSize(CELL + 8)
        self.grid.setWordWrap(True)
        self.grid.cellClicked.connect(self._clicked)
        self.message = plain_label()
        self.message.setWordWrap(True)
        self.progress = QProgressBar()
        self.buttons = QDialogButtonBox(QDialogButtonBox.Close)
        self.stop_button = self.buttons.addButton("Stop", QDialogButtonBox.ActionRole)
        self.stop_button.setToolTip("Stop drawing (the images drawn so far are kept and reused next time)")
        self.stop_button.clicked.connect(self.stop)
        self.buttons.rejected.connect(self.reject)
        self.finished.connect(lambda _: self.stop())
        layout = QVBoxLayout(self)
        layout.addWidget(self.message)
        layout.addWidget(self.progress)
        layout.addWidget(self.grid, 1)
        layout.addWidget(self.buttons)
        self.resize(1000, 640)
        self.loader.loaded.connect(self._image_loaded)
        self._cells: dict[str, tuple[int, int]] = {}  # image path -> (row, column)
        self.show_grid()

    def start(self) -> None:
        """Draw what is missing (new checkpoints; the rest is reused) and show the grid when done."""
        self.process = QProcess(self)
        self.process.readyReadStandardError.connect(self._read_progress)
        self.process.finished.connect(lambda code, _status: self._done(code))
        self._errors = b""
        self.stop_button.setEnabled(True)
        self.progress.setRange(0, 0)
        self.progress.show()
        self.message.setText("Drawing the sample prompts with each model (the images drawn before are reused)…")
        self.process.start(sys.executable, ["-m", "lumina_studio", "compare", str(self.run.path), "--json"])

    def stop(self) -> None:
        if self.process is not None and self.process.state() != QProcess.NotRunning:
            self.process.terminate()
            self.process.waitForFinished(10_000)

    @property
    def busy(self) -> bool:
        return self.process is not None and self.process.state() != QProcess.NotRunning

    def _read_progress(self) -> None:
        for line in bytes(self.process.readAllStandardError()).splitlines():
            try:
                record = json.loads(line)
                self.progress.setRange(0, record["total"])
                self.progress.setValue(record["done"])
                self.progress.setFormat("%v of %m images")
            except (ValueError, KeyError, TypeError):
                self._errors += line + b"\n"

    def _done(self, code: int) -> None:
        self.stop_button.setEnabled(False)
        self.progress.hide()
        errors = self._errors.decode("utf-8", "replace").strip().splitlines()
        if code == 0:
            self.message.setText("Click an image to see it large with its settings. Lower validation loss is "
                                 "better (measured on the images held out of training).")
        else:
            self.message.setText(errors[-1] if errors else f"Stopped (exit code {code}); the images drawn are kept.")
        self.show_grid()

    def show_grid(self) -> None:
        grid = read_json(self.folder / "grid.json", None)
        if not isinstance(grid, dict) or not grid.get("columns"):
            self.grid.setRowCount(0)
            self.grid.setColumnCount(0)
            return
        columns, prompts = grid["columns"], grid["prompts"]
        self.grid.setColumnCount(len(columns))
        self.grid.setRowCount(len(prompts))
        best = best_column(columns)
        self.grid.setHorizontalHeaderLabels([column_header(c, c is best) for c in columns])
        self.grid.setVerticalHeaderLabels([prompt if len(prompt) < 40 else prompt[:38] + "…" for prompt in prompts])
        self._cells.clear()
        for index, cells in enumerate(grid["cells"]):
            for row, relative in enumerate(cells):
                path = str(self.folder / relative)
                item = QTableWidgetItem()
                item.setData(Qt.UserRole, path)
                item.setToolTip(tooltip(f"{prompts[row]}\n{columns[index]['label']}"))  # a prompt: as written
                self._cells[path] = (row, index)
                pixmap = self.loader.get(path, CELL)
                if pixmap is not None:
                    item.setIcon(cell_icon(pixmap))
                self.grid.setItem(row, index, item)

    def _image_loaded(self, path: str, size: int) -> None:
        if size == CELL and path in self._cells:
            item, pixmap = self.grid.item(*self._cells[path]), self.loader.get(path, CELL)
            if item is not None and pixmap is not None:
                item.setIcon(cell_icon(pixmap))

    def _clicked(self, row: int, column: int) -> None:
        item = self.grid.item(row, column)
        if item is not None and Path(item.data(Qt.UserRole)).exists():
            self.enlarge(Path(item.data(Qt.UserRole)))
