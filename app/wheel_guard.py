"""In a scrolled form, spin boxes and combo boxes take the mouse wheel only when they have the focus (a click
or Tab gives it): otherwise the wheel scrolls the form, as in a browser, instead of changing a value the
pointer happened to pass over."""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtWidgets import QAbstractScrollArea, QAbstractSpinBox, QApplication, QComboBox, QWidget


class _WheelGuard(QObject):
    def eventFilter(self, watched, event):  # noqa: N802 (Qt naming)
        if event.type() != QEvent.Wheel or watched.hasFocus():
            return False
        parent = watched.parentWidget()
        while parent is not None and not isinstance(parent, QAbstractScrollArea):
            parent = parent.parentWidget()
        if parent is not None:
            QApplication.sendEvent(parent.verticalScrollBar(), event)
        return True


def guard_wheel(form: QWidget) -> None:
    """Apply the rule to every spin box and combo box inside `form`."""
    guard = _WheelGuard(form)
    for widget in form.findChildren(QAbstractSpinBox) + form.findChildren(QComboBox):
        widget.setFocusPolicy(Qt.StrongFocus)  # not the wheel focus Qt gives them by default
        widget.installEventFilter(guard)
