"""The app's one way to run short blocking work (reading a file, re-indexing) off the GUI thread.

`run_in_background(work, on_done, on_error)` runs `work()` on Qt's global thread pool and calls `on_done(result)`
or `on_error(exception)` back on the GUI thread. Models never run here: they live in worker processes.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

_in_flight: set[_Relay] = set()  # a relay must outlive its task, or its queued signal is lost


class _Relay(QObject):
    done = Signal(object)
    failed = Signal(object)


class _Task(QRunnable):
    def __init__(self, work: Callable[[], object], relay: _Relay):
        super().__init__()
        self.work, self.relay = work, relay

    def run(self):
        try:
            result = self.work()
        except Exception as exc:  # handed to on_error on the GUI thread: it is shown, never dropped
            self.relay.failed.emit(exc)
            return
        self.relay.done.emit(result)


def run_in_background(work: Callable[[], object], on_done: Callable[[object], None],
                      on_error: Callable[[Exception], None]) -> None:
    relay = _Relay()
    _in_flight.add(relay)

    def finish(callback, value):
        _in_flight.discard(relay)
        callback(value)

    relay.done.connect(lambda result: finish(on_done, result))
    relay.failed.connect(lambda exc: finish(on_error, exc))
    QThreadPool.globalInstance().start(_Task(work, relay))
