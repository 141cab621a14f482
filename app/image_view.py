"""A label that shows one image scaled to fit, keeping its aspect ratio.

An image enlarged 2x or more is drawn with nearest-neighbour scaling, pixel by pixel as it is (a 64x64
image from the demo model stays crisp); smaller factors are smoothed. Live previews are drawn the same way,
so the finished image does not snap from soft to sharp.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import QLabel, QSizePolicy


class ImageView(QLabel):
    def __init__(self, placeholder: str):
        super().__init__(placeholder)
        self.placeholder = placeholder
        self.setAlignment(Qt.AlignCenter)
        self.setMinimumSize(200, 200)
        self.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Ignored)
        self._pixmap: QPixmap | None = None

    def show_pixmap(self, pixmap: QPixmap) -> None:
        self._pixmap = pixmap
        self._rescale()

    def clear_image(self) -> None:
        self._pixmap = None
        self.setPixmap(QPixmap())
        self.setText(self.placeholder)

    def has_image(self) -> bool:
        return self._pixmap is not None and not self._pixmap.isNull()

    def resizeEvent(self, event):  # noqa: N802 (Qt naming)
        super().resizeEvent(event)
        self._rescale()

    def _rescale(self) -> None:
        if self.has_image():
            enlarged = min(self.width() / self._pixmap.width(), self.height() / self._pixmap.height())
            mode = Qt.FastTransformation if enlarged >= 2 else Qt.SmoothTransformation
            self.setPixmap(self._pixmap.scaled(self.size(), Qt.KeepAspectRatio, mode))
