"""The caption editor: every alternative caption of one image, one per line, with each line's source and
Gemma token count against the model's 256-token limit.

Natural language first: a line is a whole caption, never split into tags. What is typed is committed
(`committed(image, lines)`) 400 ms after the last key, when the editor loses focus and before another
image is shown, so nothing typed is lost to a selection change or a crash.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QTextOption
from PySide6.QtWidgets import QLabel, QPlainTextEdit, QPushButton, QVBoxLayout, QWidget

from core.captioning.state import FROM_FILE, HAND
from core.generation.prompts import MAX_TOKENS

from .plain_text import escape, plain_label

COMMIT_MS = 400
NO_CAPTION = "No caption yet. Type one (each line is an alternative caption), or caption the image with a model."
NO_IMAGE = "The captions of the image you select appear here."


class _Text(QPlainTextEdit):
    left = Signal()

    def focusOutEvent(self, event):  # noqa: N802 (Qt naming)
        super().focusOutEvent(event)
        self.left.emit()


class CaptionEditor(QWidget):
    committed = Signal(str, list)  # image, its caption lines
    convert = Signal(str)  # image: convert its caption file to UTF-8 (it is held read-only until then)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.image: str | None = None
        self._saved: list[str] = []
        self._sources: dict[str, dict] = {}
        self._count = None
        self.text = _Text()
        self.text.setPlaceholderText(NO_IMAGE)
        self.text.setWordWrapMode(QTextOption.WrapAtWordBoundaryOrAnywhere)
        self.info = QLabel()
        self.info.setWordWrap(True)
        self.info.setTextFormat(Qt.RichText)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(COMMIT_MS)
        self._timer.timeout.connect(self.commit)
        self.text.textChanged.connect(self._typed)
        self.text.left.connect(self.commit)
        self.held = plain_label()  # why the captions shown cannot be edited (not UTF-8, too long)
        self.held.setWordWrap(True)
        self.held.hide()
        self.convert_button = QPushButton("Convert to UTF-8 and edit")
        self.convert_button.setToolTip("Rewrite the caption file as UTF-8 with the text shown above")
        self.convert_button.clicked.connect(lambda: self.image and self.convert.emit(self.image))
        self.convert_button.hide()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.held)
        layout.addWidget(self.convert_button)
        layout.addWidget(self.text, 1)
        layout.addWidget(self.info)

    def set_counter(self, count) -> None:
        self._count = count

    def show_captions(self, image: str | None, captions: list[str], sources: list[dict], writable: bool,
                      held: str = "", convertible: bool = False) -> None:
        """Show an image's captions (committing what was typed for the previous one first). `held`: why they
        are shown read-only (the file is left as it is); `convertible`: offer to convert it to UTF-8."""
        self.commit()
        self.image, self._saved = image, list(captions)
        self._sources = {s["text"]: s for s in sources}
        self.text.blockSignals(True)
        self.text.setPlainText("\n".join(captions))
        self.text.blockSignals(False)
        self.text.setReadOnly(not writable or image is None or bool(held))
        self.held.setText(held)
        self.held.setVisible(bool(held))
        self.convert_button.setVisible(bool(held) and convertible and writable)
        self.text.setPlaceholderText(NO_CAPTION if image is not None else NO_IMAGE)
        self._describe()

    def lines(self) -> list[str]:
        return [" ".join(line.split()) for line in self.text.toPlainText().splitlines() if line.strip()]

    def pending(self) -> bool:
        return self.image is not None and not self.text.isReadOnly() and self.lines() != self._saved

    def commit(self) -> None:
        self._timer.stop()
        if self.pending():
            self._saved = self.lines()
            self.committed.emit(self.image, list(self._saved))
        self._describe()

    def _typed(self) -> None:
        self._timer.start()
        self._describe()

    def _describe(self) -> None:
        rows = []
        for number, line in enumerate(self.lines(), start=1):
            source = self._sources.get(line)
            if source is None or source["source"] in (HAND, FROM_FILE):
                origin = source["source"] if source else HAND  # a line being typed has no record yet
            else:
                origin = escape(f"{source['style']} · {source['source']}")
            tokens = self._count(line) if self._count else None
            if tokens is None:
                length = ""
            elif tokens > MAX_TOKENS:
                length = f" · <b style='color:#d04040'>{tokens}/{MAX_TOKENS} tokens: the model reads only the first {MAX_TOKENS}</b>"
            else:
                length = f" · {tokens}/{MAX_TOKENS} tokens"
            rows.append(f"line {number}: {origin}{length}")
        self.info.setText("<br>".join(rows) if rows else "")
