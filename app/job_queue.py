"""The job queue shown under a panel: a Qt model over a worker client's queue, and its widget.

The model knows nothing of what the jobs do (labels come with each job), so Generate and Caption share it.
"""

from __future__ import annotations

from PySide6.QtCore import QAbstractListModel, QModelIndex, Qt
from PySide6.QtWidgets import QAbstractItemView, QGroupBox, QHBoxLayout, QListView, QPushButton, QVBoxLayout

from .worker_client import WorkerClient


class JobQueueModel(QAbstractListModel):
    """Rows: the running job (▶) then the waiting ones; refreshed whenever the client's queue changes."""

    def __init__(self, client: WorkerClient, parent=None):
        super().__init__(parent)
        self.client = client
        self.rows = []
        client.queue_changed.connect(self.refresh)

    def refresh(self) -> None:
        self.beginResetModel()
        self.rows = self.client.jobs()
        self.endResetModel()

    def rowCount(self, parent=QModelIndex()):  # noqa: N802
        return 0 if parent.isValid() else len(self.rows)

    def data(self, index, role=Qt.DisplayRole):
        job, running = self.rows[index.row()]
        if role == Qt.DisplayRole:
            return ("▶ " if running else "   ") + f"#{job.id}  {job.label}"
        if role == Qt.UserRole:
            return job.id
        return None

    def row_of(self, job_id: int) -> int:
        return next((row for row, (job, _) in enumerate(self.rows) if job.id == job_id), -1)

    def waiting_ids(self) -> list[int]:
        return [job.id for job, running in self.rows if not running]


class JobQueueView(QGroupBox):
    """The queue with Up / Down / Cancel / Cancel waiting / Stop; the selection survives refreshes."""

    def __init__(self, client: WorkerClient, title: str = "Queue", stop_key: str = "Esc", parent=None):
        super().__init__(title, parent)
        self.client = client
        self.model = JobQueueModel(client, self)
        self.list = QListView()
        self.list.setModel(self.model)
        self.list.setSelectionMode(QAbstractItemView.SingleSelection)
        self.list.setMaximumHeight(120)
        self._selected: int | None = None
        self.model.modelAboutToBeReset.connect(self._remember_selection)
        self.model.modelReset.connect(lambda: self.select(self._selected))
        buttons = QHBoxLayout()
        self.buttons = {}
        for key, label, slot, tip in (
            ("up", "Up", lambda: self._move_selected(-1), "Run this job earlier"),
            ("down", "Down", lambda: self._move_selected(1), "Run this job later"),
            ("cancel", "Cancel", self.cancel_selected, "Cancel the selected job"),
            ("cancel waiting", "Cancel waiting", client.cancel_pending,
             "Cancel every waiting job; the running one goes on"),
            ("stop", f"Stop ({stop_key})" if stop_key else "Stop", client.stop_current, "Stop the running job"),
        ):
            button = QPushButton(label)
            button.setToolTip(tip)
            button.clicked.connect(slot)
            buttons.addWidget(button)
            self.buttons[key] = button
        self.model.modelReset.connect(self._enable_buttons)
        self.list.selectionModel().currentChanged.connect(self._enable_buttons)
        self._enable_buttons()
        layout = QVBoxLayout(self)
        layout.addWidget(self.list)
        layout.addLayout(buttons)

    def _enable_buttons(self) -> None:
        """Each button only when it has something to act on (an empty queue offers none)."""
        selected, waiting = self.selected_job(), self.model.waiting_ids()
        place = waiting.index(selected) if selected in waiting else None
        self.buttons["up"].setEnabled(place is not None and place > 0)
        self.buttons["down"].setEnabled(place is not None and place < len(waiting) - 1)
        self.buttons["cancel"].setEnabled(selected is not None)
        self.buttons["cancel waiting"].setEnabled(bool(waiting))
        self.buttons["stop"].setEnabled(any(running for _, running in self.model.rows))

    def selected_job(self) -> int | None:
        index = self.list.currentIndex()
        return index.data(Qt.UserRole) if index.isValid() else None

    def select(self, job_id: int | None) -> None:
        row = self.model.row_of(job_id) if job_id is not None else -1
        if row >= 0:
            self.list.setCurrentIndex(self.model.index(row))

    def cancel_selected(self) -> None:
        job_id = self.selected_job()
        if job_id is not None:
            self.client.cancel(job_id)

    def _move_selected(self, delta: int) -> None:
        job_id = self.selected_job()
        waiting = self.model.waiting_ids()
        if job_id in waiting:
            self.client.move(job_id, waiting.index(job_id) + delta)
            self.select(job_id)

    def _remember_selection(self) -> None:
        self._selected = self.selected_job()
