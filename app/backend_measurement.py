"""The auto backend's one measurement: when to time PyTorch against ONNX Runtime, and when to switch.

An engine started with backend auto on a machine where it was never measured starts on PyTorch at once.
After its first image, both backends are measured once, as a job in the queue; a person's image that arrives
meanwhile stops the measurement (exporting a large model's graphs takes minutes), which is tried again when
the queue is empty. When ONNX Runtime measured faster, the engine restarts on it once nothing waits.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal

from core.generation.messages import BackendChoice, MeasureBackends

from .worker_client import WorkerClient


class BackendMeasurement(QObject):
    measured = Signal(str, bool)  # the faster backend, and whether the engine switches to it
    switch = Signal()  # now: restart the engine (auto takes the remembered choice)

    def __init__(self, client: WorkerClient, parent=None):
        super().__init__(parent)
        self.client = client
        self.wanted = False  # measure after the next image that finishes with an empty queue
        self.job: int | None = None  # the measurement's job while it is queued or running
        self.switch_when_idle = False
        client.ready.connect(self._engine_ready)
        client.result.connect(self._result)
        client.finished.connect(self._job_finished)
        client.queue_changed.connect(self._make_way)

    def _engine_ready(self, info: dict) -> None:
        self.job, self.switch_when_idle = None, False
        self.wanted = info.get("backend_measured") is False  # auto, never measured here

    def _result(self, event) -> None:
        if isinstance(event.data, BackendChoice):
            faster = event.data.backend
            switching = faster != self.client.info.get("run", {}).get("backend")
            self.switch_when_idle = switching
            self.measured.emit(faster, switching)

    def _job_finished(self, job_id: int, outcome: str, message: str) -> None:
        if self.wanted and outcome == "done" and not self.client.busy:
            self.wanted = False
            self.job = self.client.submit(MeasureBackends(), "Measuring PyTorch against ONNX Runtime (once, for auto)")
        elif job_id == self.job and self.switch_when_idle and not self.client.busy:
            self.switch_when_idle = False
            self.switch.emit()

    def _make_way(self) -> None:
        """A job that arrives while the measurement runs stops it; it is wanted again after that job."""
        jobs = self.client.jobs()
        if self.job is not None and len(jobs) > 1 and jobs[0][1] and jobs[0][0].id == self.job:
            job, self.job, self.wanted = self.job, None, True
            self.client.cancel(job)
