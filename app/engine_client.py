"""Qt side of the engine worker: polls its events on a timer and re-emits them as signals.

Polling a multiprocessing queue without blocking costs microseconds, so the GUI thread never waits.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, QTimer, Signal

from core.worker import EngineWorker, WorkerOptions

POLL_MS = 30


class EngineClient(QObject):
    ready = Signal(dict)
    load_error = Signal(str)
    started = Signal(int)
    progress = Signal(dict)
    preview = Signal(dict)
    image_done = Signal(dict)
    job_finished = Signal(int, str, str)  # job id, "done" | "cancelled" | "error", message
    crashed = Signal(str)
    tokens = Signal(dict)
    queue_changed = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.worker: EngineWorker | None = None
        self.options: WorkerOptions | None = None
        self.info: dict = {}
        self._timer = QTimer(self)
        self._timer.timeout.connect(self._poll)

    def start(self, options: WorkerOptions) -> None:
        """(Re)start the engine with new options; waiting jobs carry over to the new process."""
        pending = self.worker.pending if self.worker else []
        self.stop()
        self.options = options
        self.info = {}
        self.worker = EngineWorker(options)
        self.worker.pending.extend(pending)
        self._timer.start(POLL_MS)
        self.queue_changed.emit()

    def stop(self) -> None:
        self._timer.stop()
        if self.worker is not None:
            self.worker.shutdown()
            self.worker = None

    @property
    def busy(self) -> bool:
        return self.worker is not None and (self.worker.current is not None or bool(self.worker.pending))

    def submit(self, request: dict, out_dir: str) -> int | None:
        if self.worker is None:
            return None
        job = self.worker.submit(request, out_dir)
        self.queue_changed.emit()
        return job

    def cancel(self, job_id: int) -> None:
        if self.worker:
            self.worker.cancel(job_id)
            self.queue_changed.emit()

    def cancel_current(self) -> None:
        if self.worker and self.worker.current:
            self.worker.cancel(self.worker.current.id)

    def cancel_pending(self) -> None:
        if self.worker:
            self.worker.cancel_pending()
            self.queue_changed.emit()

    def move(self, job_id: int, index: int) -> None:
        if self.worker:
            self.worker.move(job_id, index)
            self.queue_changed.emit()

    def count_tokens(self, prompt: str, system_prompt: str) -> int | None:
        if self.worker is None or not self.worker.ready:
            return None
        return self.worker.count_tokens(prompt, system_prompt)

    def _poll(self) -> None:
        if self.worker is None:
            return
        for event in self.worker.poll():
            kind = event["type"]
            if kind == "ready":
                self.info = event
                self.ready.emit(event)
            elif kind == "load_error":
                self.load_error.emit(event["message"])
            elif kind == "started":
                self.started.emit(event["job"])
            elif kind == "progress":
                self.progress.emit(event)
            elif kind == "preview":
                self.preview.emit(event)
            elif kind == "image":
                self.image_done.emit(event)
            elif kind in ("done", "cancelled", "error"):
                self.job_finished.emit(event["job"], kind, event.get("message", ""))
            elif kind == "crashed":
                self.crashed.emit(event["message"])
            elif kind == "tokens":
                self.tokens.emit(event)
            if kind in ("started", "done", "cancelled", "error", "crashed"):
                self.queue_changed.emit()
