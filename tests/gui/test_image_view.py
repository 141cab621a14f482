"""The large image view: small images enlarged pixel by pixel (live previews too, so the finished image does
not snap from soft to sharp), moderate enlargements smoothed."""

from PySide6.QtGui import QColor, QImage, QPixmap


def checkerboard(size: int) -> QPixmap:
    image = QImage(size, size, QImage.Format_RGB888)
    for y in range(size):
        for x in range(size):
            image.setPixelColor(x, y, QColor("white") if (x + y) % 2 else QColor("black"))
    return QPixmap.fromImage(image)


def shown_greys(view) -> int:
    """How many shown pixels are neither black nor white (blended by smoothing)."""
    image = view.pixmap().toImage()
    return sum(1 for y in range(image.height()) for x in range(image.width())
               if 10 < image.pixelColor(x, y).red() < 245)


def test_small_images_are_enlarged_without_blur_and_moderate_ones_are_smoothed(qtbot):
    from app.image_view import ImageView

    view = ImageView("nothing yet")
    qtbot.addWidget(view)
    view.resize(240, 240)
    view.show_pixmap(checkerboard(8))  # enlarged 30x
    assert view.pixmap().width() == 240 and shown_greys(view) == 0
    view.show_pixmap(checkerboard(150))  # enlarged 1.6x: smoothed, as nearest-neighbour would alias
    assert shown_greys(view) > 1000
