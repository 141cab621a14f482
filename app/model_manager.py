"""Model manager: the registered models with size and precision; add a folder or a single file; remove."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QDialog, QDialogButtonBox, QFileDialog, QHBoxLayout, QMessageBox, QPushButton, QTableWidget, QTableWidgetItem,
    QVBoxLayout,
)

from core.errors import LuminaError
from core.models.registry import DEMO_NAME, add_model, available_models, remove_model
from core.models.sources import describe_weights, resolve_source
from core.storage import human_size

from .background import run_in_background
from .plain_text import plain_label


class ModelManager(QDialog):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Models")
        self.added: str | None = None  # the name of a model added while the dialog was open
        self.resize(760, 320)
        self.table = QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(["Name", "Kind", "Size", "Precision", "Path"])
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setSelectionBehavior(QTableWidget.SelectRows)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        buttons = QHBoxLayout()
        for label, slot in (("Add folder…", self.add_folder), ("Add file…", self.add_file), ("Remove", self.remove)):
            button = QPushButton(label)
            button.clicked.connect(slot)
            buttons.addWidget(button)
        buttons.addStretch(1)
        close = QDialogButtonBox(QDialogButtonBox.Close)
        close.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        self.status = plain_label()
        self.status.setWordWrap(True)
        layout.addWidget(self.table)
        layout.addWidget(self.status)
        layout.addLayout(buttons)
        layout.addWidget(close)
        self.refresh()

    def refresh(self) -> None:
        entries = available_models()  # the built-in demo first: it is there, it just cannot be removed
        self.table.setRowCount(len(entries))
        for row, entry in enumerate(entries):
            try:
                size, precision = describe_weights(resolve_source(entry["path"], entry.get("components")))
                size_text = human_size(size)
            except LuminaError as exc:
                size_text, precision = "missing", str(exc)
            for column, text in enumerate([entry["name"], entry["kind"], size_text, precision, entry["path"]]):
                self.table.setItem(row, column, QTableWidgetItem(text))
        self.table.resizeColumnsToContents()

    def add_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "A Lumina-Image 2.0 diffusers folder")
        if folder:
            self.add(folder)

    def add_file(self) -> None:
        path = QFileDialog.getOpenFileName(self, "A single-file DiT checkpoint", "",
                                           "Checkpoints (*.safetensors *.pth *.pt *.bin *.ckpt)")[0]
        if not path:
            return
        try:
            resolve_source(path)
            components = None
        except LuminaError:
            components = QFileDialog.getExistingDirectory(
                self, "The diffusers folder with its text encoder, tokenizer and VAE")
            if not components:
                return
        self.add(path, components)

    def add(self, path: str, components: str | None = None) -> None:
        """Check and register in the background: opening a large checkpoint takes seconds."""
        self.status.setText(f"Checking {path}…")
        self.setEnabled(False)
        run_in_background(lambda: add_model(path, components=components), self._added, self._not_added)

    def _added(self, entry: dict) -> None:
        self.setEnabled(True)
        self.status.setText(f"Added '{entry['name']}'.")
        self.refresh()
        self.added = entry["name"]

    def _not_added(self, exc: Exception) -> None:
        self.setEnabled(True)
        self.status.setText("")
        QMessageBox.warning(self, "Cannot add this model", str(exc) if isinstance(exc, LuminaError) else
                            f"{type(exc).__name__}: {exc}")

    def remove(self) -> None:
        row = self.table.currentRow()
        if row < 0:
            return
        name = self.table.item(row, 0).text()
        if name == DEMO_NAME:
            self.status.setText("The built-in demo model cannot be removed; it takes no space of yours.")
            return
        remove_model(name)
        self.refresh()
