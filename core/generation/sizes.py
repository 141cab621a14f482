"""Image sizes the model was trained on: the authors' demo list, 64 px grid, area <= 1024^2, aspect <= 4:1."""

from __future__ import annotations


def trained_sizes(area: int = 1024 * 1024, grid: int = 64, max_aspect: float = 4.0) -> list[tuple[int, int]]:
    """(width, height) pairs along the area limit's staircase, widest first.

    Walk from the widest strip (all cells in one row) to the tallest: add a row while the cells still
    fit the area, otherwise drop a column. Every visited shape within the aspect limit is a size.
    """
    cells = area // (grid * grid)
    columns, rows = cells, 1
    sizes = []
    while columns > 0:
        if max(columns, rows) / min(columns, rows) <= max_aspect:
            sizes.append((columns * grid, rows * grid))
        if columns * (rows + 1) <= cells:
            rows += 1
        else:
            columns -= 1
    return sizes
