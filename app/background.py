"""The app's one way to run short blocking work (reading a file, re-indexing) off the GUI thread.

`run_in_background(work, on_done, on_error)` runs `work()` on Qt's global thread pool and calls `on_done(result)`
or `on_error(exception)` back on the GUI thread. Work that reports progress is a generator: each value it yields
goes to `on_progress(value)` on the GUI thread, its return value to `on_done`, and when `should_stop()` turns
true it is closed at its next yield (its `finally` blocks clean up) and `on_error` gets `Cancelled`. Models
never run here: they live in worker processes.

`BackgroundTask` is work of one kind whose newest run alone counts (a folder's captions, a run's log, a dataset
check): starting it again stops the run before, and what a stopped or replaced run returns is dropped. Work
hands back a plain result that the GUI thread takes in; it never changes what the GUI thread reads.
"""

from __future__ import annotations

import threading
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


class BackgroundTask(QObject):
    """One kind of background work, one run at a time: `start` stops the run before it (its `should_stop` turns
    true, a generator is closed at its next yield) and numbers the new one, so a stopped or replaced run's
    result, error or progress never reaches the callbacks. `work(should_stop)` gets its run's token."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._run = 0
        self._token: threading.Event | None = None

    @property
    def running(self) -> bool:
        return self._token is not None

    def start(self, work: Callable[[Callable[[], bool]], object], on_done: Callable[[object], None],
              on_error: Callable[[Exception], None], on_progress: Callable[[object], None] | None = None) -> None:
        self.stop()
        run, token = self._run, threading.Event()
        self._token = token

        def current(callback, last=False):
            def call(value):
                if run != self._run:  # stopped or replaced meanwhile
                    return
                if last:
                    self._token = None
                callback(value)
            return call

        run_in_background(lambda: work(token.is_set), current(on_done, last=True), current(on_error, last=True),
                          current(on_progress) if on_progress else None, should_stop=token.is_set)

    def stop(self) -> None:
        if self._token is not None:
            self._token.set()
            self._token = None
        self._run += 1
