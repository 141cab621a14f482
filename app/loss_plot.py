"""A live training plot drawn with QPainter (no plotting library: nothing to import at start-up, nothing to
break on a PySide6 upgrade).

The raw values are drawn as a band (the lowest and highest value within each pixel column), the smoothed
curve (an exponential moving average) over it, stage boundaries as dashed lines with their names. Drawing
costs one pass over the points with numpy per paint, so 100,000 steps stay well inside a frame.
"""

from __future__ import annotations

import math

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from trainer.events import Step, Validation

SMOOTHING = 0.9  # per logged point, bias-corrected as TensorBoard does (the first points are not dragged to 0)
SERIES = {"loss": "Loss", "lr": "Learning rate", "grad_norm": "Gradient norm"}
COMPARISON_COLOUR = QColor("#e07b00")  # orange: apart from the highlight colour in both themes
VALIDATION_COLOUR = QColor("#2e9d5b")  # green, for the validation loss's dots


TICKS = 4  # value labels on the y-axis: 5, the lowest and highest among them


def value_range(lowest: float, highest: float) -> tuple[float, float]:
    """The y-axis range for values from `lowest` to `highest`: one value gets a band around it, to its scale
    (a fixed ±0.5 drew a loss of 0.148 from -0.352 to 0.648), and values near the float limit never divide
    by zero (1e30 + 0.5 is still 1e30)."""
    if not highest - lowest > 1e-9 * max(1.0, abs(highest)):
        pad = abs(highest) * 0.1 or 0.1
        lowest, highest = lowest - pad, highest + pad
    if not math.isfinite(highest - lowest):
        lowest, highest = -1.0, 1.0
    return lowest, highest


class PlotPoints:
    """The logged steps and their values, apart from the widget: a long log is read into one off the GUI thread."""

    def __init__(self):
        self.steps: list[int] = []
        self.values: dict[str, list[float]] = {name: [] for name in SERIES}
        self.smoothed: list[float] = []
        self._average = 0.0
        self.validation: list[tuple[int, float]] = []  # (step, validation loss)

    def add(self, step: Step) -> bool:
        """Takes a training step; False when it has no finite loss (nothing to plot)."""
        if not math.isfinite(step.loss):
            return False
        self.steps.append(step.step)
        for name in SERIES:  # the series are named as Step's fields
            self.values[name].append(float(getattr(step, name)))
        self._average = SMOOTHING * self._average + (1 - SMOOTHING) * step.loss
        self.smoothed.append(self._average / (1 - SMOOTHING ** len(self.steps)))
        return True

    def add_validation(self, validation: Validation) -> None:
        if math.isfinite(validation.loss):
            self.validation.append((validation.step, float(validation.loss)))


class LossPlot(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setMinimumHeight(120)  # the Train tab fits a 700 px high screen
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        self.series = "loss"
        self.log_scale = False
        self.set_comparison(None)
        self.clear()

    def clear(self) -> None:
        self.set_points(PlotPoints())
        self.stages: list[tuple[int, str]] = []

    def set_comparison(self, points: PlotPoints | None, name: str = "") -> None:
        """Another run's smoothed loss drawn dashed over this one's (the loss series only), or none."""
        import numpy as np

        self.comparison, self.comparison_name = points, name
        self._comparison_arrays = None if points is None else (
            np.asarray(points.steps, dtype=float), np.asarray(points.smoothed, dtype=float))  # once, not per paint
        self.update()

    def set_points(self, points: PlotPoints) -> None:
        self.points = points
        self._arrays = None
        self.update()

    @property
    def steps(self) -> list[int]:
        return self.points.steps

    @property
    def values(self) -> dict[str, list[float]]:
        return self.points.values

    def add_step(self, step: Step) -> None:
        if self.points.add(step):
            self._arrays = None

    def add_validation(self, validation: Validation) -> None:
        self.points.add_validation(validation)
        self.update()

    def _validation_dots(self):
        """(steps, validation losses) on this plot's scale, drawn with the loss only; None when there are none."""
        import numpy as np

        if self.series != "loss" or not self.points.validation:
            return None
        steps, losses = (np.asarray(column, dtype=float) for column in zip(*self.points.validation))
        keep = (losses > 0) if self.log_scale else np.ones(len(losses), dtype=bool)
        if not keep.any():
            return None
        return steps[keep], (np.log10(losses[keep]) if self.log_scale else losses[keep])

    def add_stage(self, step: int, name: str) -> None:
        self.stages.append((step, name))

    def set_series(self, name: str) -> None:
        self.series = name
        self._arrays = None
        self.update()

    def set_log_scale(self, on: bool) -> None:
        self.log_scale = on
        self.update()

    def _data(self):
        import numpy as np

        if self._arrays is None:
            values = np.asarray(self.values[self.series], dtype=float)
            smooth = np.asarray(self.points.smoothed if self.series == "loss" else [], dtype=float)
            self._arrays = np.asarray(self.steps, dtype=float), values, smooth
        return self._arrays

    def _comparison_curve(self):
        """(steps, smoothed loss) of the run compared with, on this plot's scale; None when there is none."""
        import numpy as np

        if self._comparison_arrays is None or self.series != "loss" or not self.comparison.smoothed:
            return None
        steps, smooth = self._comparison_arrays
        keep = np.isfinite(smooth) & ((smooth > 0) if self.log_scale else True)
        if not keep.any():
            return None
        return steps[keep], (np.log10(smooth[keep]) if self.log_scale else smooth[keep])

    def paintEvent(self, event):  # noqa: N802 (Qt naming)
        import numpy as np

        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        palette = self.palette()
        text = palette.color(palette.ColorRole.WindowText)
        area = QRectF(self.rect()).adjusted(56, 12, -12, -28)
        painter.setPen(QPen(text, 1))
        painter.drawRect(area)
        steps, values, smooth = self._data()
        keep = np.isfinite(values) & ((values > 0) if self.log_scale else True)
        if keep.sum() < 1:
            painter.drawText(area, Qt.AlignCenter, "No steps logged yet" if not len(steps) else "Nothing to plot")
            return
        shown = np.log10(values) if self.log_scale else values
        lowest, highest = float(shown[keep].min()), float(shown[keep].max())
        first, last = float(steps[0]), float(max(steps[-1], steps[0] + 1))
        other, dots = self._comparison_curve(), self._validation_dots()
        for curve in (other, dots):
            if curve is not None:
                lowest, highest = min(lowest, float(curve[1].min())), max(highest, float(curve[1].max()))
                first, last = min(first, float(curve[0].min())), max(last, float(curve[0].max()))
        lowest, highest = value_range(lowest, highest)

        def x_of(step):
            return area.left() + (step - first) / (last - first) * area.width()

        def y_of(value):
            return area.bottom() - (value - lowest) / (highest - lowest) * area.height()

        # the raw band: per pixel column, the lowest and highest value
        columns = np.clip(((steps[keep] - first) / (last - first) * (area.width() - 1)).astype(int), 0,
                          int(area.width()) - 1)
        values_kept = shown[keep]
        starts = np.flatnonzero(np.r_[True, columns[1:] != columns[:-1]])
        lows, highs = np.minimum.reduceat(values_kept, starts), np.maximum.reduceat(values_kept, starts)
        band = QColor(palette.color(palette.ColorRole.Highlight))
        band.setAlpha(110)
        painter.setPen(QPen(band, 1))
        if len(starts) == len(values_kept):  # fewer points than pixels: the raw values as a thin line
            raw = QPainterPath()
            for i, (step, value) in enumerate(zip(steps[keep], values_kept)):
                point = QPointF(x_of(step), y_of(float(value)))
                raw.moveTo(point) if i == 0 else raw.lineTo(point)
            painter.drawPath(raw)
        else:
            for column, low, high in zip(columns[starts], lows, highs):
                x = area.left() + column
                painter.drawLine(QPointF(x, y_of(low)), QPointF(x, y_of(high) - 0.5))
        if len(smooth) == len(steps):  # the smoothed loss, one point per column
            curve = np.log10(np.clip(smooth, 1e-30, None)) if self.log_scale else smooth
            path = QPainterPath()
            for i, index in enumerate(np.flatnonzero(keep)[starts]):
                point = QPointF(x_of(steps[index]), y_of(float(curve[index])))
                path.moveTo(point) if i == 0 else path.lineTo(point)
            painter.setPen(QPen(palette.color(palette.ColorRole.Highlight).darker(130), 2))
            painter.drawPath(path)
        if other is not None:  # another run's smoothed loss, dashed, in a colour apart from the highlight
            path = QPainterPath()
            for i, (step, value) in enumerate(zip(*other)):
                point = QPointF(x_of(float(step)), y_of(float(value)))
                path.moveTo(point) if i == 0 else path.lineTo(point)
            painter.setPen(QPen(COMPARISON_COLOUR, 2, Qt.DashLine))
            painter.drawPath(path)
        if dots is not None:  # the validation loss: dots joined by a thin line, over the training loss
            painter.setPen(QPen(VALIDATION_COLOUR, 1.5))
            points = [QPointF(x_of(float(step)), y_of(float(value))) for step, value in zip(*dots)]
            for start, end in zip(points, points[1:]):
                painter.drawLine(start, end)
            painter.setBrush(VALIDATION_COLOUR)
            for point in points:
                painter.drawEllipse(point, 3.5, 3.5)
            painter.setBrush(Qt.NoBrush)
        painter.setPen(QPen(text, 1, Qt.DashLine))
        metrics = painter.fontMetrics()
        for step, name in self.stages:
            if step <= last:
                x = x_of(max(step, first))
                if step > first:
                    painter.drawLine(QPointF(x, area.top()), QPointF(x, area.bottom()))
                width = metrics.horizontalAdvance(name)
                left = x + 4 if x + 4 + width <= area.right() - 2 else max(area.left() + 2, x - 4 - width)
                painter.drawText(QPointF(left, area.top() + 14), name)  # never cut off at the right edge
        label = (lambda v: f"{10 ** v:.3g}") if self.log_scale else (lambda v: f"{v:.3g}")
        grid = QColor(text)
        grid.setAlpha(40)
        for tick in range(TICKS + 1):  # a labelled value every quarter of the height, with a faint line
            value = lowest + (highest - lowest) * tick / TICKS
            y = y_of(value)
            if 0 < tick < TICKS:
                painter.setPen(QPen(grid, 1))
                painter.drawLine(QPointF(area.left(), y), QPointF(area.right(), y))
            painter.setPen(QPen(text, 1))
            painter.drawText(QRectF(0, y - 8, 52, 16), Qt.AlignRight | Qt.AlignVCenter, label(value))
        painter.drawText(QRectF(area.left(), area.bottom() + 4, 120, 16), Qt.AlignLeft, f"step {int(first)}")
        painter.drawText(QRectF(area.right() - 120, area.bottom() + 4, 120, 16), Qt.AlignRight, f"step {int(last)}")
        painter.drawText(QRectF(area.left() + 8, area.bottom() - 22, area.width() - 16, 16), Qt.AlignLeft,
                         SERIES[self.series] + (" (log scale)" if self.log_scale else "")
                         + ("; thin: each step, thick: smoothed" if len(smooth) == len(steps) else "")
                         + ("; green dots: validation loss" if dots is not None else "")
                         + (f"; dashed: {self.comparison_name}" if other is not None else ""))
