"""Guards against a Qt binding bug that would crash the app in a long session."""

import sys

from PySide6.QtCore import QObject, Signal


class Emitter(QObject):
    fired = Signal(int)


def test_signal_emit_keeps_reference_counts(qapp):
    # PySide6 6.12.0 dropped a reference to True on every emit(): after a few thousand progress and
    # preview events the interpreter aborted. The project excludes that release.
    emitter = Emitter()
    emitter.fired.connect(lambda value: None)
    before = sys.getrefcount(True)
    for value in range(5000):
        emitter.fired.emit(value)
    assert abs(sys.getrefcount(True) - before) < 50
