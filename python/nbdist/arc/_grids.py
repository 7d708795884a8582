"""Grid validation and packing shared by the nbdist.arc modules (private)."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

from .._errors import ArcValueError

Grid = list[list[int]]

MAX_SIDE = 30


def grid_problem(grid: Any) -> str | None:
    """Why ``grid`` is not an ARC grid (rectangular, 1..30 x 1..30, ints 0..9), or None."""
    if not isinstance(grid, (list, tuple)):
        return f"is a {type(grid).__name__}, not a list of rows"
    if not 1 <= len(grid) <= MAX_SIDE:
        return f"has {len(grid)} rows (1..{MAX_SIDE} allowed)"
    width = None
    for r, row in enumerate(grid):
        if not isinstance(row, (list, tuple)):
            return f"row {r} is a {type(row).__name__}, not a list of cells"
        if width is None:
            width = len(row)
            if not 1 <= width <= MAX_SIDE:
                return f"row 0 has {width} cells (1..{MAX_SIDE} allowed)"
        elif len(row) != width:
            return f"row {r} has {len(row)} cells, row 0 has {width}"
        for c, v in enumerate(row):
            if type(v) is not int:
                v = _colour(v)
            if v is None or not 0 <= v <= 9:
                return f"cell [{r}][{c}] is {row[c]!r} (colours are ints 0..9)"
    return None


def _colour(v: Any) -> int | None:
    """An integer of another type (numpy.int64 from ``[list(r) for r in array]``) as an int;
    None for anything else, bool included."""
    if isinstance(v, bool):
        return None
    try:
        return operator.index(v)
    except TypeError:
        return None


def check_grid(grid: Any, where: str) -> Grid:
    """Returns ``grid`` as a list of lists, or raises ArcValueError naming ``where``."""
    if hasattr(grid, "tolist") and not isinstance(grid, (list, tuple)):
        grid = grid.tolist()
    problem = grid_problem(grid)
    if problem is not None:
        raise ArcValueError(f"{where} {problem}")
    return [list(row) if all(type(v) is int for v in row) else [operator.index(v) for v in row]
            for row in grid]


def pack(grids: Sequence[Grid]) -> tuple[bytes, list[int]]:
    """Grids -> (row-major cells back to back, [h0, w0, h1, w1, ...])."""
    shapes: list[int] = []
    cells = bytearray()
    for g in grids:
        shapes.append(len(g))
        shapes.append(len(g[0]))
        for row in g:
            cells.extend(row)
    return bytes(cells), shapes


def unpack(cells: bytes, shapes: Sequence[int]) -> list[Grid]:
    out: list[Grid] = []
    pos = 0
    for i in range(0, len(shapes), 2):
        h, w = shapes[i], shapes[i + 1]
        out.append([list(cells[pos + r * w : pos + (r + 1) * w]) for r in range(h)])
        pos += h * w
    return out
