"""Export… in the monitor's Checkpoints tab: a checkpoint written for ComfyUI, the authors' code or diffusers by
`lumina-studio export-checkpoint` in a process of its own (the app never imports torch), with Cancel."""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import QProcess, Signal
from PySide6.QtWidgets import (
    QComboBox, QDialog, QDialogButtonBox, QFileDialog, QFormLayout, QHBoxLayout, QLineEdit, QProgressBar, QPushButton,
    QVBoxLayout,
)

from core.models.export import default_output

from .plain_text import plain_label

FORMATS = {
    "comfyui": "ComfyUI: one file for Load Diffusion Model (models/diffusion_models)",
    "original": "The authors' layout: one file their code and most loaders read",
    "diffusers": "diffusers: a complete folder (Lumina2Pipeline.from_pretrained)",
}
PRECISIONS = {"bf16": "bf16 (half the size; what Lumina 2 ships in)", "fp16": "fp16", "fp32": "fp32 (exact)"}


class ExportDialog(QDialog):
    exported = Signal(str)  # the file or folder written

    def __init__(self, checkpoint: Path, parent=None):
        super().__init__(parent)
        self.checkpoint = checkpoint
        self.setWindowTitle(f"Export {checkpoint.parents[1].name} step {int(checkpoint.name.removeprefix('step-'))}")
        self.process: QProcess | None = None
        self.format = QComboBox()
        for name, text in FORMATS.items():
            self.format.addItem(text, name)
        self.precision = QComboBox()
        for name, text in PRECISIONS.items():
            self.precision.addItem(text, name)
        self.out = QLineEdit()
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self._edited = False
        self.out.textEdited.connect(lambda _: setattr(self, "_edited", True))
        for box in (self.format, self.precision):
            box.currentIndexChanged.connect(self._suggest)
        self._suggest()
        where = QHBoxLayout()
        where.addWidget(self.out, 1)
        where.addWidget(browse)
        form = QFormLayout()
        form.addRow("Format", self.format)
        form.addRow("Precision", self.precision)
        form.addRow("Write to", where)
        self.message = plain_label()
        self.message.setWordWrap(True)
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)  # one file: no steps to count
        self.busy.hide()
        self.buttons = QDialogButtonBox(QDialogButtonBox.Cancel)
        self.export_button = self.buttons.addButton("Export", QDialogButtonBox.AcceptRole)
        self.buttons.accepted.connect(self.start)
        self.buttons.rejected.connect(self.cancel)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.busy)
        layout.addWidget(self.message)
        layout.addWidget(self.buttons)
        self.resize(560, self.sizeHint().height())

    def _suggest(self) -> None:
        if not self._edited:  # a path typed by hand is kept when the format changes
            self.out.setText(str(default_output(self.checkpoint, self.format.currentData(),
                                                self.precision.currentData())))

    def _browse(self) -> None:
        if self.format.currentData() == "diffusers":
            chosen = QFileDialog.getSaveFileName(self, "Export to a new folder", self.out.text())[0]
        else:
            chosen = QFileDialog.getSaveFileName(self, "Export to", self.out.text(), "safetensors (*.safetensors)")[0]
        if chosen:
            self.out.setText(chosen)
            self._edited = True

    def start(self) -> None:
        out = self.out.text().strip()
        if not out:
            self.message.setText("Choose where to write the export.")
            return
        self.process = QProcess(self)
        self.process.finished.connect(lambda code, _status: self._finished(code, out))
        self.export_button.setEnabled(False)
        self.busy.show()
        self.message.setText(f"Writing {Path(out).name}…")
        self.process.start(sys.executable, ["-m", "lumina_studio", "export-checkpoint", str(self.checkpoint),
                                            "--format", self.format.currentData(),
                                            "--dtype", self.precision.currentData(), "--out", out])

    def _finished(self, code: int, out: str) -> None:
        errors = bytes(self.process.readAllStandardError()).decode("utf-8", "replace").strip()
        self.busy.hide()
        self.export_button.setEnabled(True)
        if code == 0:
            self.message.clear()
            self.exported.emit(out)
            self.accept()
        else:
            self.message.setText(errors.splitlines()[-1] if errors else f"The export stopped (exit code {code}).")

    def cancel(self) -> None:
        """Stops an export in progress (it leaves nothing behind) and closes."""
        if self.process is not None and self.process.state() != QProcess.NotRunning:
            self.process.terminate()
            self.process.waitForFinished(10_000)
        self.reject()
