"""The app's one way to run short blocking work (reading a file, re-indexing) off the GUI thread.

`run_in_background(work, on_done, on_error)` runs `work()` on Qt's global thread pool and calls `on_done(result)`
or `on_error(exception)` back on the GUI thread. Work that reports progress is a generator: each value it yields
goes to `on_progress(value)` on the GUI thread, its return value to `on_done`, and when `should_stop()` turns
true it is closed at its next yield (its `finally` blocks clean up) and `on_error` gets `Cancelled`. Models
never run here: they live in worker processes.
"""

from __future__ import annotations

import types
from collections.abc import Callable

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

from core.errors import Cancelled

_in_flight: set[_Relay] = set()  # a relay must outlive its task, or its queued signal is lost


class _Relay(QObject):
    done = Signal(object)
    failed = Signal(object)
    progress = Signal(object)


class _Task(QRunnable):
    def __init__(self, work: Callable[[], object], relay: _Relay, should_stop: Callable[[], bool]):
        super().__init__()
        self.work, self.relay, self.should_stop = work, relay, should_stop

    def run(self):
        try:
            result = self.work()
            if isinstance(result, types.GeneratorType):
                result = self._follow(result)
        except Exception as exc:  # handed to on_error on the GUI thread: it is shown, never dropped
            self.relay.failed.emit(exc)
            return
        self.relay.done.emit(result)

    def _follow(self, steps):
        while True:
            if self.should_stop():
                steps.close()
                raise Cancelled()
            try:
                self.relay.progress.emit(next(steps))
            except StopIteration as finished:
                return finished.value


def run_in_background(work: Callable[[], object], on_done: Callable[[object], None],
                      on_error: Callable[[Exception], None], on_progress: Callable[[object], None] | None = None,
                      should_stop: Callable[[], bool] = lambda: False) -> None:
    relay = _Relay()
    if on_progress is not None:
        relay.progress.connect(on_progress)
    _in_flight.add(relay)

    def finish(callback, value):
        _in_flight.discard(relay)
        callback(value)

    relay.done.connect(lambda result: finish(on_done, result))
    relay.failed.connect(lambda exc: finish(on_error, exc))
    QThreadPool.globalInstance().start(_Task(work, relay, should_stop))
