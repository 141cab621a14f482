"""The Caption panel's dialogs: find & replace with a preview of every change, export, and two captions of
one image side by side."""

from __future__ import annotations

import difflib
import html
from pathlib import Path

from PySide6.QtWidgets import (
    QCheckBox, QComboBox, QDialog, QDialogButtonBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit,
    QPushButton, QTextBrowser, QVBoxLayout,
)

from core.captioning.review import EXPORT_FORMATS, CaptionDataset, Change, ReviewError

PREVIEW_SHOWN = 500  # changes listed in the preview; the count covers them all


class FindReplaceDialog(QDialog):
    """Find, replace, preview, then Replace all (one undo for all of it). `changes` holds what to apply."""

    def __init__(self, dataset: CaptionDataset, filtered: list[str], parent=None):
        super().__init__(parent)
        self.setWindowTitle("Find and replace in captions")
        self.dataset, self.filtered = dataset, filtered
        self.changes: list[Change] = []
        self.find, self.replace = QLineEdit(), QLineEdit()
        self.find.setPlaceholderText("text to find")
        self.replace.setPlaceholderText("replace with (empty: remove it)")
        self.regex = QCheckBox("Regular expression (\\1 in the replacement is the first group)")
        self.scope = QComboBox()
        self.scope.addItem(f"All images ({len(dataset.images)})", "all")
        self.scope.addItem(f"The images the filter shows ({len(filtered)})", "filtered")
        self.preview_button = QPushButton("Preview")
        self.preview_button.clicked.connect(self.preview)
        self.preview_text = QTextBrowser()
        self.summary = QLabel("Preview first: nothing is changed until you press Replace all.")
        self.buttons = QDialogButtonBox(QDialogButtonBox.Cancel)
        self.apply_button = self.buttons.addButton("Replace all", QDialogButtonBox.AcceptRole)
        self.apply_button.setEnabled(False)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        for field in (self.find, self.replace):
            field.textChanged.connect(lambda _: self.apply_button.setEnabled(False))
        self.regex.toggled.connect(lambda _: self.apply_button.setEnabled(False))
        self.scope.currentIndexChanged.connect(lambda _: self.apply_button.setEnabled(False))
        form = QFormLayout()
        form.addRow("Find", self.find)
        form.addRow("Replace", self.replace)
        form.addRow("", self.regex)
        form.addRow("In", self.scope)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.preview_button)
        layout.addWidget(self.preview_text, 1)
        layout.addWidget(self.summary)
        layout.addWidget(self.buttons)
        self.resize(720, 520)

    def preview(self) -> None:
        images = self.dataset.images if self.scope.currentData() == "all" else self.filtered
        try:
            self.changes = self.dataset.preview_replace(self.find.text(), self.replace.text(), self.regex.isChecked(),
                                                        images)
        except ReviewError as exc:
            self.changes = []
            self.summary.setText(str(exc))
            self.apply_button.setEnabled(False)
            return
        rows = []
        for change in self.changes[:PREVIEW_SHOWN]:
            for before, after in zip(change.before, change.after):
                if before != after:
                    rows.append(f"<p><b>{html.escape(change.image)}</b><br>{word_diff(before, after)}</p>")
        self.preview_text.setHtml("".join(rows) or "<p>No caption contains it.</p>")
        more = len(self.changes) - PREVIEW_SHOWN
        self.summary.setText(f"{len(self.changes)} images would change" + (f" (the first {PREVIEW_SHOWN} shown)"
                                                                             if more > 0 else "") + ".")
        self.apply_button.setEnabled(bool(self.changes))


def word_diff(before: str, after: str) -> str:
    """HTML of `after` against `before`: removed words struck through in red, added ones in green."""
    old, new = before.split(), after.split()
    parts = []
    for op, a1, a2, b1, b2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        if op in ("delete", "replace"):
            parts.append(f"<s style='color:#c83c3c'>{html.escape(' '.join(old[a1:a2]))}</s>")
        if op in ("insert", "replace"):
            parts.append(f"<b style='color:#3a9a4a'>{html.escape(' '.join(new[b1:b2]))}</b>")
        if op == "equal":
            parts.append(html.escape(" ".join(old[a1:a2])))
    return " ".join(parts)


class ExportDialog(QDialog):
    def __init__(self, dataset: CaptionDataset, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Export captions")
        self.dataset = dataset
        self.format = QComboBox()
        for name, description in EXPORT_FORMATS.items():
            self.format.addItem(description, name)
        self.approved = QCheckBox("Approved images only")
        self.target = QLineEdit(str(dataset.folder.parent / f"{dataset.folder.name}-export"))
        browse = QPushButton("Choose…")
        browse.clicked.connect(self._browse)
        self.format.currentIndexChanged.connect(self._format_changed)
        row = QHBoxLayout()
        row.addWidget(self.target, 1)
        row.addWidget(browse)
        approved = sum(1 for i in dataset.images if dataset.status_of(i) == "approved")
        form = QFormLayout()
        form.addRow("Format", self.format)
        form.addRow("", self.approved)
        form.addRow("To", row)
        form.addRow("", QLabel(f"{len(dataset.images)} images, {approved} approved. Images without a caption are "
                               "left out; a manifest lists the counts."))
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.button(QDialogButtonBox.Ok).setText("Export")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(buttons)

    def _format_changed(self) -> None:
        target = Path(self.target.text())
        if self.format.currentData() == "jsonl" and target.suffix != ".jsonl":
            self.target.setText(str(target.with_suffix(".jsonl")))
        elif self.format.currentData() != "jsonl" and target.suffix == ".jsonl":
            self.target.setText(str(target.with_suffix("")))

    def _browse(self) -> None:
        if self.format.currentData() == "jsonl":
            chosen, _ = QFileDialog.getSaveFileName(self, "Export to", self.target.text(), "JSON lines (*.jsonl)")
        else:
            chosen = QFileDialog.getExistingDirectory(self, "Export into", self.target.text())
        if chosen:
            self.target.setText(chosen)

    def choice(self) -> tuple[str, Path, bool]:
        return self.format.currentData(), Path(self.target.text()).expanduser(), self.approved.isChecked()


class CompareDialog(QDialog):
    """Two of an image's captions side by side, the words that differ marked."""

    def __init__(self, image: str, sources: list[dict], parent=None):
        super().__init__(parent)
        self.setWindowTitle(f"Compare captions of {image}")
        self.sources = sources
        labels = [f"line {n}: {s['style'] or s['source']}" for n, s in enumerate(sources, start=1)]
        self.left_text, self.right_text = QTextBrowser(), QTextBrowser()  # before any _show
        self.left, self.right = QComboBox(), QComboBox()
        for box in (self.left, self.right):
            box.addItems(labels)
        self.right.setCurrentIndex(min(1, len(labels) - 1))
        for box in (self.left, self.right):
            box.currentIndexChanged.connect(self._show)
        pick = QHBoxLayout()
        pick.addWidget(self.left)
        pick.addWidget(self.right)
        texts = QHBoxLayout()
        texts.addWidget(self.left_text)
        texts.addWidget(self.right_text)
        close = QDialogButtonBox(QDialogButtonBox.Close)
        close.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(pick)
        layout.addLayout(texts, 1)
        layout.addWidget(close)
        self.resize(760, 320)
        self._show()

    def _show(self) -> None:
        a = self.sources[self.left.currentIndex()]["text"]
        b = self.sources[self.right.currentIndex()]["text"]
        self.left_text.setHtml(own_words(a, b))
        self.right_text.setHtml(own_words(b, a))


def own_words(text: str, other: str) -> str:
    """HTML of `text` with the words `other` does not have in bold."""
    mine, theirs = text.split(), other.split()
    parts = []
    for op, a1, a2, _, _ in difflib.SequenceMatcher(a=mine, b=theirs, autojunk=False).get_opcodes():
        words = html.escape(" ".join(mine[a1:a2]))
        if words:
            parts.append(words if op == "equal" else f"<b style='color:#2f7fd0'>{words}</b>")
    return " ".join(parts)
