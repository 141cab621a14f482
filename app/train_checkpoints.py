"""The monitor's list of a run's checkpoints: step, stage, validation loss (the best marked), prompt alignment
where measured, size. The chosen row is what "Use in Generate" and "Export…" act on."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

from core.storage import human_size
from trainer.compare import alignment_text
from trainer.run_folder import CheckpointInfo, RunFolder, best_checkpoint

COLUMNS = ("Step", "Stage", "Validation loss", "Alignment", "Size")
BEST = "★ best"


class CheckpointTable(QTableWidget):
    def __init__(self, parent=None):
        super().__init__(0, len(COLUMNS), parent)
        self.setHorizontalHeaderLabels(COLUMNS)
        self.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.setSelectionMode(QAbstractItemView.SingleSelection)
        self.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.verticalHeader().setVisible(False)
        self.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.horizontalHeader().setStretchLastSection(True)
        self.setToolTip("Every complete checkpoint of the run, newest first. The validation loss is measured on "
                        "the images held out of training, with fixed noise: lower is better; ★ marks the lowest "
                        "(at the highest resolution), which keep_checkpoints never deletes.")
        self.checkpoints: list[CheckpointInfo] = []

    def show_checkpoints(self, run: RunFolder | None, alignment: dict) -> None:
        """Lists the run's checkpoints (newest first), keeping a selected one selected."""
        chosen = self._selected()
        self.checkpoints = list(reversed(run.checkpoint_list())) if run is not None else []
        best = best_checkpoint(self.checkpoints)
        self.setRowCount(len(self.checkpoints))
        for row, checkpoint in enumerate(self.checkpoints):
            loss = "" if checkpoint.validation_loss is None else f"{checkpoint.validation_loss:.5f} " \
                                                                  f"({checkpoint.validation_resolution} px)"
            if best is not None and checkpoint.path == best.path:
                loss = f"{loss}  {BEST}"
            cells = (str(checkpoint.step), checkpoint.stage, loss, alignment_text(alignment.get(checkpoint.path.name)),
                     human_size(checkpoint.size) if checkpoint.size else "")
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setData(Qt.UserRole, str(checkpoint.path))
                if column == 0:
                    item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                self.setItem(row, column, item)
            if chosen is not None and checkpoint.path == chosen:
                self.selectRow(row)

    def _selected(self) -> Path | None:
        rows = self.selectionModel().selectedRows()
        return Path(self.item(rows[0].row(), 0).data(Qt.UserRole)) if rows else None

    def chosen(self) -> Path | None:
        """The selected checkpoint, else the newest; None when the run has none."""
        return self._selected() or (self.checkpoints[0].path if self.checkpoints else None)
