"""Qt side of a job worker: polls its events on a timer and re-emits them as signals.

Polling a multiprocessing queue without blocking costs microseconds, so the GUI thread never waits. One
client per service (generation now, captioning next); panels talk to their client, never to the worker.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, QTimer, Signal

from core.jobs import FINISHED, Event, EventType, Failure, Job, JobWorker

POLL_MS = 30


class WorkerClient(QObject):
    ready = Signal(object)  # the service's info dict (Signal(dict) would convert it to a QVariantMap)
    load_error = Signal(str)
    started = Signal(int)
    progress = Signal(object)  # Event, its data the service's message (jobs.Progress, ImageProgress, ...)
    preview = Signal(object)
    result = Signal(object)
    finished = Signal(int, str, str)  # job id, "done" | "cancelled" | "error", message
    crashed = Signal(str)
    answer = Signal(object)  # jobs.Answer
    queue_changed = Signal()

    def __init__(self, service: str, name: str, parent=None):
        super().__init__(parent)
        self.service, self.name = service, name
        self.worker: JobWorker | None = None
        self.info: dict = {}
        self._timer = QTimer(self)
        self._timer.timeout.connect(self._poll)

    def start(self, options) -> None:
        """(Re)start the service with new options; waiting jobs carry over to the new process."""
        pending = self.worker.pending if self.worker else []
        self.stop()
        self.info = {}
        self.worker = JobWorker(self.service, options, self.name)
        self.worker.adopt(pending)
        self._timer.start(POLL_MS)
        self.queue_changed.emit()

    def stop(self) -> None:
        self._timer.stop()
        if self.worker is not None:
            self.worker.shutdown()
            self.worker = None

    @property
    def busy(self) -> bool:
        return self.worker is not None and self.worker.busy

    def jobs(self) -> list[tuple[Job, bool]]:
        """The running job (True) then the waiting ones, in order."""
        if self.worker is None:
            return []
        running = [(self.worker.current, True)] if self.worker.current else []
        return running + [(job, False) for job in self.worker.pending]

    def submit(self, payload: dict, label: str) -> int | None:
        if self.worker is None:
            return None
        job = self.worker.submit(payload, label)
        self.queue_changed.emit()
        return job

    def cancel(self, job_id: int) -> None:
        self._change(lambda w: w.cancel(job_id))

    def stop_current(self) -> None:
        self._change(lambda w: w.stop_current())

    def cancel_pending(self) -> None:
        self._change(lambda w: w.cancel_pending())

    def move(self, job_id: int, index: int) -> None:
        self._change(lambda w: w.move(job_id, index))

    def _change(self, action) -> None:
        if self.worker is not None:
            action(self.worker)
            self.queue_changed.emit()

    def ask(self, query: dict) -> int | None:
        if self.worker is None or not self.worker.ready:
            return None
        return self.worker.ask(query)

    def _poll(self) -> None:
        if self.worker is None:
            return
        for event in self.worker.poll():
            self._dispatch(event)

    def _dispatch(self, event: Event) -> None:
        kind = event.type
        if kind == EventType.READY:
            self.info = event.data
            self.ready.emit(event.data)
        elif kind == EventType.LOAD_ERROR:
            self.load_error.emit(event.data.message)
        elif kind == EventType.STARTED:
            self.started.emit(event.job)
        elif kind == EventType.PROGRESS:
            self.progress.emit(event)
        elif kind == EventType.PREVIEW:
            self.preview.emit(event)
        elif kind == EventType.RESULT:
            self.result.emit(event)
        elif kind in FINISHED:
            self.finished.emit(event.job, kind.value, event.data.message if isinstance(event.data, Failure) else "")
        elif kind == EventType.CRASHED:
            self.crashed.emit(event.data.message)
        elif kind == EventType.ANSWER:
            self.answer.emit(event)
        if kind in (EventType.STARTED, EventType.CRASHED, *FINISHED):
            self.queue_changed.emit()
