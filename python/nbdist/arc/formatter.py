"""Grid <-> text: the prompt a model reads and the reply text it writes.

One symbol per cell (``alphabet[c]`` for colour ``c``), every row ended by ``row_end``. A prompt
is, for each train pair, ``input_marker + rows(input) + output_marker + rows(output) + end_marker``,
then ``input_marker + rows(test input) + output_marker``; the model's reply is
``rows(output) + end_marker``. Decoding a reply cuts it at the first ``end_marker`` and rejects
empty, ragged, oversized (> 30) or unknown-symbol text as invalid (returns None, and bulk
decoding counts the reasons) instead of raising.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import _core
from .._errors import ArcValueError
from ._grids import Grid, check_grid, pack, unpack

_arc = _core.arc


class GridFormatter:
    """Formats tasks as prompt text and decodes reply text into grids (decoding runs in C++)."""

    def __init__(self, *, alphabet: str = "0123456789", row_end: str = "\n",
                 input_marker: str = "I", output_marker: str = "O", end_marker: str = "."):
        if (not isinstance(alphabet, str) or len(alphabet) != 10 or len(set(alphabet)) != 10
                or not alphabet.isascii()):
            raise ArcValueError(f"GridFormatter: alphabet must be 10 distinct ASCII symbols, "
                                f"got {alphabet!r}")
        if not row_end or any(ch in alphabet for ch in row_end):
            raise ArcValueError(f"GridFormatter: row_end {row_end!r} must be non-empty and use "
                                f"no alphabet symbol")
        markers = {"input_marker": input_marker, "output_marker": output_marker,
                   "end_marker": end_marker}
        for name, m in markers.items():
            # A marker needs a symbol no grid text can contain, or parsing would be ambiguous.
            if not m or all(ch in alphabet or ch in row_end for ch in m):
                raise ArcValueError(f"GridFormatter: {name} {m!r} needs a symbol outside the "
                                    f"alphabet and row_end")
        if len(set(markers.values())) != 3:
            raise ArcValueError("GridFormatter: the three markers must differ")
        self.alphabet, self.row_end = alphabet, row_end
        self.input_marker, self.output_marker, self.end_marker = (input_marker, output_marker,
                                                                  end_marker)

    def __repr__(self) -> str:
        return (f"GridFormatter(alphabet={self.alphabet!r}, row_end={self.row_end!r}, "
                f"input_marker={self.input_marker!r}, output_marker={self.output_marker!r}, "
                f"end_marker={self.end_marker!r})")

    # encoding ------------------------------------------------------------------------------
    def fmt_grid(self, grid: Any) -> str:
        """The rows of ``grid``, each ended by ``row_end`` (no markers)."""
        g = check_grid(grid, "grid")
        a, e = self.alphabet, self.row_end
        return "".join("".join(a[v] for v in row) + e for row in g)

    def fmt_reply(self, grid: Any) -> str:
        """What the model should generate for ``grid``: its rows, then ``end_marker``."""
        return self.fmt_grid(grid) + self.end_marker

    def fmt_replies(self, grids: Sequence[Any]) -> list[str]:
        """:meth:`fmt_reply` for many grids at once (encoded in C++)."""
        checked = [check_grid(g, f"grids[{i}]") for i, g in enumerate(grids)]
        cells, shapes = pack(checked)
        return _arc.encode_grids(self.alphabet, self.row_end, self.end_marker, cells, shapes)

    def fmt_query(self, task: dict[str, Any], test_index: int = 0) -> str:
        """The prompt for test ``test_index`` of ``task``: all train pairs, then the test input
        followed by ``output_marker`` (where the model continues)."""
        parts = []
        for pair in task["train"]:
            parts += [self.input_marker, self.fmt_grid(pair["input"]), self.output_marker,
                      self.fmt_reply(pair["output"])]
        parts += [self.input_marker, self.fmt_grid(task["test"][test_index]["input"]),
                  self.output_marker]
        return "".join(parts)

    def fmt_task(self, task: dict[str, Any], test_index: int = 0) -> tuple[str, str | None]:
        """(prompt, reply): the reply is None when the test output is unknown."""
        t = task["test"][test_index]
        return self.fmt_query(task, test_index), (self.fmt_reply(t["output"])
                                                  if "output" in t else None)

    # decoding ------------------------------------------------------------------------------
    def decode(self, text: str) -> Grid | None:
        """The grid in a reply text, or None when the text is not a valid grid."""
        if not isinstance(text, (str, bytes)):
            raise ArcValueError(f"text is a {type(text).__name__}, not a str")
        grids, _ = self.decode_many([text])
        return grids[0]

    def decode_many(self, texts: Sequence[str]) -> tuple[list[Grid | None], dict[str, int]]:
        """Decodes replies in bulk: (grids with None for invalid ones, counts per reason)."""
        texts = list(texts)
        try:
            cells, shapes, status = _arc.decode_texts(self.alphabet, self.row_end,
                                                      self.end_marker, texts)
        except TypeError:
            bad = next((i for i, t in enumerate(texts) if not isinstance(t, (str, bytes))), None)
            if bad is None:
                raise
            raise ArcValueError(f"texts[{bad}] is a {type(texts[bad]).__name__}, not a str"
                                ) from None
        grids = unpack(cells, shapes)
        counts: dict[str, int] = {}
        out: list[Grid | None] = []
        for g, s in zip(grids, status):
            counts[s] = counts.get(s, 0) + 1
            out.append(g if s == "ok" else None)
        return out, counts

    def parse_query(self, text: str) -> dict[str, Any]:
        """Inverse of :meth:`fmt_query` (and of a prompt followed by its reply): the task back."""
        def take_grid(pos: int, until: str, what: str) -> tuple[Grid, int]:
            end = text.find(until, pos)
            if end < 0:
                raise ArcValueError(f"prompt: {what}: no {until!r} after position {pos}")
            g = self.decode(text[pos:end])
            if g is None:
                raise ArcValueError(f"prompt: {what}: not a valid grid at position {pos}")
            return g, end + len(until)

        pairs = []
        pos = 0
        while True:
            if not text.startswith(self.input_marker, pos):
                raise ArcValueError(f"prompt: expected {self.input_marker!r} at position {pos}")
            inp, pos = take_grid(pos + len(self.input_marker), self.output_marker,
                                 f"pair {len(pairs)} input")
            if pos == len(text):
                return {"train": pairs, "test": [{"input": inp}]}
            out, pos = take_grid(pos, self.end_marker, f"pair {len(pairs)} output")
            if pos == len(text):
                return {"train": pairs, "test": [{"input": inp, "output": out}]}
            pairs.append({"input": inp, "output": out})
