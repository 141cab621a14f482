"""The one rule for showing text that came from a file, a server or a user: as plain text.

Qt guesses whether a label's, tooltip's or message box's text is rich text (Qt.mightBeRichText), so a
caption, prompt, file name or server reply holding `<img src=...>` or `<h1>` would load local files or take
over the window. Labels that show such text are set to Qt.PlainText; where it goes into our own markup
(a headline with bold, a tooltip) it is escaped first.
"""

from __future__ import annotations

import html

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QMessageBox, QWidget


def escape(text: object) -> str:
    """`text` for our own markup: tags shown as written, line breaks kept."""
    return html.escape(str(text), quote=False).replace("\n", "<br>")


def tooltip(text: object) -> str:
    """A tooltip that shows `text` as written (a tooltip is rich text when Qt guesses so)."""
    return f"<p style='white-space:pre-wrap'>{html.escape(str(text), quote=False)}</p>" if str(text) else ""


def plain_label(text: str = "", parent: QWidget | None = None) -> QLabel:
    label = QLabel(text, parent)
    label.setTextFormat(Qt.PlainText)
    return label


def message(parent: QWidget | None, title: str, text: str, icon=QMessageBox.Warning) -> None:
    """A message box whose text is shown as written (an error naming a file, a model's type, a server's
    reply)."""
    box = QMessageBox(icon, title, text, QMessageBox.Ok, parent)
    box.setTextFormat(Qt.PlainText)
    box.exec()


def ask(parent: QWidget | None, title: str, text: str) -> bool:
    """Yes / No (No the default), the text shown as written."""
    box = QMessageBox(QMessageBox.Question, title, text, QMessageBox.Yes | QMessageBox.No, parent)
    box.setDefaultButton(QMessageBox.No)
    box.setTextFormat(Qt.PlainText)
    return box.exec() == QMessageBox.Yes
