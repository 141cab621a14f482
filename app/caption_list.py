"""The Caption panel's image list: a Qt model over the images a filter lets through, a page at a time, with
thumbnails decoded off the GUI thread and each image's review status as a coloured mark."""

from __future__ import annotations

from PySide6.QtCore import QAbstractListModel, QModelIndex, QSize, Qt
from PySide6.QtGui import QColor, QPixmap

from core.captioning.review import CaptionDataset

from .image_loader import ImageLoader

THUMBNAIL = 96
STATUS_COLOURS = {"unreviewed": None, "approved": "#3a9a4a", "needs fixing": "#d0a020", "rejected": "#c83c3c"}
STATUS_MARKS = {"unreviewed": "", "approved": "✓ ", "needs fixing": "✎ ", "rejected": "✗ "}


class CaptionListModel(QAbstractListModel):
    PAGE = 200

    def __init__(self, loader: ImageLoader, parent=None):
        super().__init__(parent)
        self.loader = loader
        self.dataset: CaptionDataset | None = None
        self.all: list[str] = []  # the filtered images
        self.shown = 0  # rows fetched so far
        self._rows: dict[str, int] = {}
        self.placeholder = QPixmap(THUMBNAIL, THUMBNAIL)
        self.placeholder.fill(Qt.gray)
        loader.loaded.connect(self._thumbnail_ready)

    def set_images(self, dataset: CaptionDataset | None, images: list[str]) -> None:
        self.beginResetModel()
        self.dataset, self.all = dataset, images
        self.shown = min(self.PAGE, len(images))
        self._rows = {image: row for row, image in enumerate(images)}
        self.endResetModel()

    def image(self, row: int) -> str | None:
        return self.all[row] if 0 <= row < len(self.all) else None

    def row_of(self, image: str) -> int:
        return self._rows.get(image, -1)

    def ensure_shown(self, row: int) -> None:
        """Fetch pages up to `row` (moving by keyboard past the loaded rows)."""
        while row >= self.shown and self.canFetchMore():
            self.fetchMore()

    def refresh(self, image: str) -> None:
        row = self.row_of(image)
        if 0 <= row < self.shown:
            index = self.index(row)
            self.dataChanged.emit(index, index)

    def rowCount(self, parent=QModelIndex()):  # noqa: N802
        return 0 if parent.isValid() else self.shown

    def canFetchMore(self, parent=QModelIndex()):  # noqa: N802
        return not parent.isValid() and self.shown < len(self.all)

    def fetchMore(self, parent=QModelIndex()):  # noqa: N802
        more = min(self.PAGE, len(self.all) - self.shown)
        self.beginInsertRows(QModelIndex(), self.shown, self.shown + more - 1)
        self.shown += more
        self.endInsertRows()

    def data(self, index, role=Qt.DisplayRole):
        image = self.all[index.row()]
        if role == Qt.DisplayRole:
            return STATUS_MARKS[self.dataset.status_of(image)] + image.rsplit("/", 1)[-1]
        if role == Qt.DecorationRole:
            return self.loader.get(str(self.dataset.path(image)), THUMBNAIL) or self.placeholder
        if role == Qt.ForegroundRole:
            colour = STATUS_COLOURS[self.dataset.status_of(image)]
            return QColor(colour) if colour else None
        if role == Qt.ToolTipRole:
            return f"{image}\n{self.dataset.status_of(image)}"
        if role == Qt.SizeHintRole:
            return QSize(200, THUMBNAIL + 8)
        if role == Qt.UserRole:
            return image
        return None

    def _thumbnail_ready(self, path: str, size: int) -> None:
        if self.dataset is None or size != THUMBNAIL:
            return
        folder = str(self.dataset.folder)
        if path.startswith(folder):
            self.refresh(path[len(folder) + 1:].replace("\\", "/"))
