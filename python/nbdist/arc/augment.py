"""Augmentations of ARC tasks and their exact inverses (the work runs in C++).

An :class:`Augmentation` composes, in this order: an optional transpose, ``rot`` counter-clockwise
quarter turns (``numpy.rot90``), a colour permutation (colour ``c`` becomes ``perm[c]``) and a
reordering of the train pairs. Its ``suffix`` names it inside a sample key, e.g.
``00576224_0.tp.rot1.perm0213456789.ex2-0-1``; parts that do nothing are left out, so the identity
has the empty suffix. The 8 dihedral transforms are ``rot`` 0..3 with and without ``tp``.
"""

from __future__ import annotations

import numbers
import random as _random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import _core
from .._errors import ArcValueError
from ._grids import Grid, check_grid, pack, unpack

_arc = _core.arc


@dataclass(frozen=True)
class Augmentation:
    """One composed augmentation; see the module docstring for the order of its parts."""

    transpose: bool = False
    rot: int = 0
    perm: tuple[int, ...] | None = None
    example_order: tuple[int, ...] | None = None

    def __post_init__(self):
        # The C++ side stores these as small ints and would silently truncate 1.5 or 256: check
        # the types here; the C++ parser is the single definition of the rest.
        def ints(v):
            return all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in v)

        if not ints([self.rot]) or not 0 <= self.rot <= 3:
            raise ArcValueError(f"Augmentation: rot must be an int 0..3, got {self.rot!r}")
        if self.perm is not None and (not ints(self.perm)
                                      or sorted(self.perm) != list(range(10))):
            raise ArcValueError(f"Augmentation: perm must be a permutation of 0..9, "
                                f"got {self.perm!r}")
        if self.example_order is not None and (not ints(self.example_order) or sorted(
                self.example_order) != list(range(len(self.example_order)))):
            raise ArcValueError(f"Augmentation: example_order must be a permutation of "
                                f"0..n-1, got {self.example_order!r}")
        _arc.parse_suffix(self.suffix)

    @property
    def suffix(self) -> str:
        """The key suffix naming this augmentation ("" for the identity)."""
        return _arc.format_suffix(bool(self.transpose), int(self.rot),
                                  None if self.perm is None else list(self.perm),
                                  list(self.example_order or ()))

    @classmethod
    def from_suffix(cls, suffix: str) -> Augmentation:
        """Parses ``".tp.rot1.perm..."`` (each part at most once, any order)."""
        if not isinstance(suffix, str):
            raise ArcValueError(f"augmentation suffix must be a str, got {suffix!r}")
        try:
            tp, rot, perm, order = _arc.parse_suffix(suffix)
        except ValueError as e:
            raise ArcValueError(str(e)) from None
        return cls(tp, rot, None if perm is None else tuple(perm), tuple(order) or None)

    @classmethod
    def dihedral(cls, index: int) -> Augmentation:
        """Dihedral transform ``index`` in 0..7: ``rot = index % 4``, transposed when ≥ 4."""
        if not 0 <= index <= 7:
            raise ArcValueError(f"dihedral index must be 0..7, got {index}")
        return cls(index >= 4, index % 4)

    @classmethod
    def random(cls, rng: _random.Random, *, keep_background: bool = True,
               n_train: int = 0) -> Augmentation:
        """A random dihedral transform, colour permutation (colour 0 fixed when
        ``keep_background``) and, when ``n_train`` > 1, train-pair order."""
        cols = list(range(1, 10)) if keep_background else list(range(10))
        rng.shuffle(cols)
        perm = tuple([0] + cols) if keep_background else tuple(cols)
        order = None
        if n_train > 1:
            order = list(range(n_train))
            rng.shuffle(order)
            order = tuple(order)
        d = rng.randrange(8)
        return cls(d >= 4, d % 4, perm, order)

    # grids ---------------------------------------------------------------------------------
    def apply_packed(self, cells: bytes, shapes: Sequence[int]) -> tuple[bytes, list[int]]:
        """Bulk form: grids as row-major cells back to back plus ``[h0, w0, h1, w1, ...]``."""
        return _arc.transform_grids(self.suffix, cells, list(shapes), False)

    def invert_packed(self, cells: bytes, shapes: Sequence[int]) -> tuple[bytes, list[int]]:
        """The exact inverse of :meth:`apply_packed`."""
        return _arc.transform_grids(self.suffix, cells, list(shapes), True)

    def apply_grids(self, grids: Sequence[Any]) -> list[Grid]:
        return self._grids([check_grid(g, f"grids[{i}]") for i, g in enumerate(grids)], False)

    def invert_grids(self, grids: Sequence[Any]) -> list[Grid]:
        return self._grids([check_grid(g, f"grids[{i}]") for i, g in enumerate(grids)], True)

    def apply_grid(self, grid: Any) -> Grid:
        return self._grids([check_grid(grid, "grid")], False)[0]

    def invert_grid(self, grid: Any) -> Grid:
        return self._grids([check_grid(grid, "grid")], True)[0]

    def _grids(self, grids: list[Grid], inverse: bool) -> list[Grid]:
        # Checked grids only: a ragged grid packs into cells that the shapes of its neighbours
        # can absorb, and comes back silently rearranged.
        cells, shapes = pack(grids)
        out, oshapes = _arc.transform_grids(self.suffix, cells, shapes, inverse)
        return unpack(out, oshapes)

    # per-cell score arrays -------------------------------------------------------------------
    def apply_scores(self, scores: Any) -> Any:
        """Moves a per-cell score array of shape (h, w) or (h, w, 10) like a grid; with 10
        channels (one per colour) the colour permutation also permutes the channels."""
        return self._scores(scores, inverse=False)

    def invert_scores(self, scores: Any) -> Any:
        """The exact inverse of :meth:`apply_scores`."""
        return self._scores(scores, inverse=True)

    def _scores(self, scores: Any, inverse: bool) -> Any:
        np = None
        if hasattr(scores, "shape") and hasattr(scores, "ravel"):
            import numpy as np  # only when the caller already uses numpy

            shape = tuple(scores.shape)
            flat = [float(x) for x in scores.ravel().tolist()]
        else:
            rows = [list(r) for r in scores]
            h, w = len(rows), len(rows[0]) if rows else 0
            nested = bool(rows and rows[0] and isinstance(rows[0][0], (list, tuple)))
            shape = (h, w, len(rows[0][0])) if nested else (h, w)
            for r, row in enumerate(rows):
                # A ragged array could still hold h * w values, and come back rearranged.
                if len(row) != w or nested and any(
                        not isinstance(c, (list, tuple)) or len(c) != shape[2] for c in row):
                    raise ArcValueError(f"score array row {r} is not shaped like row 0 "
                                        f"({w} cells{f' of {shape[2]} values' if nested else ''})")
            flat = [float(v) for r in rows for c in r for v in (c if nested else (c,))]
        if len(shape) not in (2, 3):
            raise ArcValueError(f"score arrays are (h, w) or (h, w, 10); got shape {shape}")
        channels = shape[2] if len(shape) == 3 else 1
        out, oh, ow = _arc.transform_scores(self.suffix, flat, shape[0], shape[1], channels,
                                            inverse)
        if np is not None:
            arr = np.asarray(out, dtype=scores.dtype if scores.dtype.kind == "f" else np.float64)
            return arr.reshape((oh, ow) + ((channels,) if len(shape) == 3 else ()))
        if len(shape) == 2:
            return [out[r * ow:(r + 1) * ow] for r in range(oh)]
        return [[out[(r * ow + c) * channels:(r * ow + c + 1) * channels] for c in range(ow)]
                for r in range(oh)]


DIHEDRAL: tuple[Augmentation, ...] = tuple(Augmentation.dihedral(i) for i in range(8))


def split_key(key: str) -> tuple[str, Augmentation]:
    """``"00576224_0.tp.rot1"`` -> (``"00576224_0"``, the augmentation)."""
    unit, dot, rest = key.partition(".")
    return unit, Augmentation.from_suffix(dot + rest)


def augment(task: dict[str, Any], spec: Augmentation | str) -> dict[str, Any]:
    """A copy of ``task`` (``{"train": [...], "test": [...]}``) under ``spec`` (an
    :class:`Augmentation` or its suffix): train pairs reordered, every grid transformed."""
    aug = Augmentation.from_suffix(spec) if isinstance(spec, str) else spec
    train = list(task["train"])
    if aug.example_order is not None:
        if len(aug.example_order) != len(train):
            raise ArcValueError(f"augmentation {aug.suffix!r} orders {len(aug.example_order)} "
                                f"train pairs, the task has {len(train)}")
        train = [train[i] for i in aug.example_order]
    grids: list[Grid] = []
    for i, p in zip(aug.example_order or range(len(train)), train):
        grids += [check_grid(p["input"], f"task: train[{i}].input"),
                  check_grid(p["output"], f"task: train[{i}].output")]
    tests = task["test"]
    for i, t in enumerate(tests):
        grids.append(check_grid(t["input"], f"task: test[{i}].input"))
        if "output" in t:
            grids.append(check_grid(t["output"], f"task: test[{i}].output"))
    it = iter(aug._grids(grids, False))
    out_train = [{"input": next(it), "output": next(it)} for _ in train]
    out_test = []
    for t in tests:
        e = {"input": next(it)}
        if "output" in t:
            e["output"] = next(it)
        out_test.append(e)
    return {"train": out_train, "test": out_test}
