"""Images decoded off the GUI thread: a thread pool runs QImageReader at the size wanted, the GUI thread only
turns finished QImages into pixmaps (cached). The Gallery and the Caption panel share it, and the delegate
that shows thumbnails in their true colours."""

from __future__ import annotations

from collections import OrderedDict

from PySide6.QtCore import QObject, QRunnable, Qt, QThreadPool, Signal
from PySide6.QtGui import QIcon, QImage, QImageReader, QPixmap
from PySide6.QtWidgets import QStyledItemDelegate, QStyleOptionViewItem


class _Loaded(QObject):
    done = Signal(str, int, QImage)  # path, requested size, image


class _LoadImage(QRunnable):
    def __init__(self, path: str, size: int, signals: _Loaded):
        super().__init__()
        self.path, self.size, self.signals = path, size, signals

    def run(self):
        reader = QImageReader(self.path)
        original = reader.size()
        if original.isValid() and max(original.width(), original.height()) > self.size:  # never enlarged here:
            reader.setScaledSize(original.scaled(self.size, self.size, Qt.KeepAspectRatio))  # the view scales
        self.signals.done.emit(self.path, self.size, reader.read())  # a null image when unreadable


class ImageLoader(QObject):
    """Decodes images off the GUI thread; remembers the last few hundred results."""

    loaded = Signal(str, int)

    def __init__(self, parent=None, capacity: int = 600):
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(2)
        self.signals = _Loaded()
        self.signals.done.connect(self._store)
        self.cache: OrderedDict[tuple[str, int], QPixmap] = OrderedDict()
        self.capacity = capacity
        self._waiting: set[tuple[str, int]] = set()

    def stop(self) -> None:
        """Drop queued decodes and wait for running ones (before the window and Python go away)."""
        self.pool.clear()
        self.pool.waitForDone(5000)

    def get(self, path: str, size: int) -> QPixmap | None:
        key = (path, size)
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        if key not in self._waiting:
            self._waiting.add(key)
            self.pool.start(_LoadImage(path, size, self.signals))
        return None

    def _store(self, path: str, size: int, image: QImage) -> None:
        self._waiting.discard((path, size))
        self.cache[(path, size)] = QPixmap.fromImage(image)
        while len(self.cache) > self.capacity:
            self.cache.popitem(last=False)
        self.loaded.emit(path, size)


class TrueColourThumbnails(QStyledItemDelegate):
    """Draws a thumbnail as it is, at the view's icon size: Qt's default tints a selected one with the selection
    colour, which misleads anyone judging an image's colours (a black background shows navy), and never draws
    a small image (the demo's 64x64) larger than it is. Small images are enlarged pixel by pixel, so they stay
    sharp. The selection still shows around it."""

    def initStyleOption(self, option, index) -> None:  # noqa: N802 (Qt naming)
        super().initStyleOption(option, index)
        if option.features & QStyleOptionViewItem.HasDecoration and not option.icon.isNull():
            view = self.parent()
            if hasattr(view, "iconSize") and view.iconSize().isValid():
                option.decorationSize = view.iconSize()  # a pixmap's decoration is laid out at its own size
            size = option.decorationSize
            pixmap = option.icon.pixmap(option.icon.availableSizes()[-1] if option.icon.availableSizes() else size)
            if pixmap.width() < size.width() and pixmap.height() < size.height():
                pixmap = pixmap.scaled(size, Qt.KeepAspectRatio, Qt.FastTransformation)
            elif pixmap.width() > size.width() or pixmap.height() > size.height():
                pixmap = pixmap.scaled(size, Qt.KeepAspectRatio, Qt.SmoothTransformation)
            icon = QIcon(pixmap)
            icon.addPixmap(pixmap, QIcon.Selected)
            option.icon = icon
