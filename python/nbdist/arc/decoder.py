"""The candidate Decoder: collect model samples per unit, then select and evaluate in C++.

Port of the ARC Prize 2024 winners' notebook ending::

    decoder = Decoder(formatter, arc_test_set.split_multi_replies(), n_guesses=2,
                      prob_baseline=0.05)
    decoder.add_many(records)                      # {"key", "text" | "grid", "logprob", ...}
    submission = arc_test_set.get_submission(decoder.run_selection_algo("score_full_probmul_3"))
    decoder.benchmark_selection_algos(["score_all_probsum", "score_full_probmul_3"])

See :mod:`nbdist.arc.selection` for the algorithms and their formulas.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .. import _core
from .._errors import ArcValueError
from ._grids import Grid, check_grid, pack
from .dataset import ArcDataset
from .formatter import GridFormatter
from .selection import ALGORITHM_NAMES, baseline_of, resolve


def _task_of(unit_key: str) -> str:
    tid, sep, idx = unit_key.rpartition("_")
    return tid if sep and idx.isascii() and idx.isdigit() else unit_key


class Decoder:
    """Groups de-augmented samples per unit and ranks them with a selection algorithm.

    ``dataset_or_unit_keys``: an :class:`ArcDataset` (its unit keys ``<task>_<i>``, and its
    solutions, when known, for :meth:`benchmark_selection_algos`) or a list of unit keys.
    ``n_guesses``: attempts kept per unit (Kaggle allows 2). ``prob_baseline``: ``p`` in
    ``b = -ln p`` of product_of_experts_gen.
    """

    def __init__(self, formatter: GridFormatter | None = None,
                 dataset_or_unit_keys: ArcDataset | Sequence[str] | None = None,
                 n_guesses: int = 2, prob_baseline: float = 0.05):
        if dataset_or_unit_keys is None or isinstance(dataset_or_unit_keys, (str, bytes)):
            raise ArcValueError(f"Decoder: pass an ArcDataset or a list of unit keys, got "
                                f"{dataset_or_unit_keys!r}")
        if isinstance(n_guesses, bool) or not isinstance(n_guesses, int) or n_guesses < 1:
            raise ArcValueError(f"Decoder: n_guesses must be an int >= 1, got {n_guesses!r}")
        if not (isinstance(prob_baseline, (int, float)) and 0 < prob_baseline <= 1):
            raise ArcValueError(f"Decoder: prob_baseline must be in (0, 1], got {prob_baseline!r}")
        self.formatter = formatter if formatter is not None else GridFormatter()
        self.n_guesses = n_guesses
        self.prob_baseline = float(prob_baseline)
        self.dataset = dataset_or_unit_keys if isinstance(dataset_or_unit_keys,
                                                          ArcDataset) else None
        truths = None
        if self.dataset is not None:
            keys, tasks, *truths = self.dataset._decoder_inputs()
        else:
            task_ids: dict[str, int] = {}
            keys = [str(k) for k in dataset_or_unit_keys]
            tasks = [task_ids.setdefault(_task_of(k), len(task_ids)) for k in keys]
        self.unit_keys: list[str] = list(keys)
        self._unit_index = {k: i for i, k in enumerate(keys)}
        # Per unit, the list forms of its candidates' grids (see run_selection_algo).
        self._grid_cache: list[list[Grid | None] | None] = []
        f = self.formatter
        try:
            # More guesses than any unit can have candidates mean "all of them": clamped to
            # what the C++ int holds.
            self._dec = _core.arc.Decoder(keys, tasks, min(n_guesses, 2**31 - 1), f.alphabet,
                                          f.row_end, f.end_marker)
        except ValueError as e:
            raise ArcValueError(f"Decoder: {e}") from None
        if truths and truths[0]:
            self._dec.set_truths(*truths)

    # ---------------------------------------------------------------- ingest
    def set_truth(self, unit_key: str, grid: Any) -> None:
        """Records the solution of a unit (for scoring); datasets with solutions do this."""
        g = check_grid(grid, f"truth of unit {unit_key!r}")
        cells, _ = pack([g])
        self._dec.set_truth(self._unit(unit_key), cells, len(g), len(g[0]))

    def add(self, key: str, *, grid: Any = None, text: str | None = None, logprob: float,
            aug_logprobs: Sequence[float] | None = None) -> bool:
        """Adds one sample: ``key`` is ``<unit>`` plus the augmentation suffix it was generated
        under; give the model's reply ``text`` or the ``grid`` (in augmented space either way);
        ``logprob`` sums the generated tokens' log-probabilities (end token included);
        ``aug_logprobs`` are the candidate's log-probabilities under re-scoring augmentations.
        Returns False when the sample is invalid (counted, not raised)."""
        return self.add_many([{"key": key, "grid": grid, "text": text, "logprob": logprob,
                               "aug_logprobs": aug_logprobs}]) == 0

    def add_many(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Adds records (dicts with the fields of :meth:`add`) in order; returns how many were
        invalid. A malformed record (unknown unit, bad suffix, NaN, neither or both of
        grid/text, a wrong type) raises ArcValueError naming it, and then nothing of the batch
        is added."""
        if isinstance(records, Mapping):
            raise ArcValueError("add_many: pass a list of records, not one record (use add)")
        records = records if isinstance(records, list) else list(records)
        try:
            try:
                return self._dec.add_records(records)
            except TypeError as e:
                if "not a dict" not in str(e):
                    raise
                for i, r in enumerate(records):
                    if not isinstance(r, Mapping):
                        raise ArcValueError(f"record {i}: is a {type(r).__name__}, not a dict "
                                            f"with 'key', 'logprob' and 'text' or 'grid'"
                                            ) from None
                # Other mappings work too, at the cost of a copy.
                return self._dec.add_records([dict(r) for r in records])
        except ArcValueError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise ArcValueError(_record_error(records, e)) from None

    # ---------------------------------------------------------------- selection
    def _spec(self, name: str):
        spec = resolve(name)
        return spec.algo_id, spec.common_shape, baseline_of(spec, self.prob_baseline)

    def _unit(self, unit_key: str) -> int:
        try:
            return self._unit_index[unit_key]
        except KeyError:
            raise ArcValueError(f"unknown unit {unit_key!r}") from None

    def run_selection_algo(self, name: str) -> dict[str, list[Grid]]:
        """``{unit_key: [up to n_guesses grids, best first]}`` under algorithm ``name``.

        The grid lists are shared between calls (that is what makes comparing many algorithms
        cheap): copy one before changing it."""
        return self._dec.select_grids(*self._spec(name), self._grid_cache, self.unit_keys)

    def ranking(self, unit_key: str, name: str) -> list[dict[str, Any]]:
        """The full ranking of one unit: dicts with grid, score (None for order-based
        algorithms), samples and whether it is the truth."""
        u = self._unit(unit_key)
        spec = self._spec(name)
        order = self._dec.rank(*spec, u)
        scores = self._dec.scores(*spec, u)
        cands = self._dec.candidates(u)
        truth = self._dec.truth_index(u)
        return [{"grid": cands[c][0], "score": scores[c] if scores else None,
                 "samples": len(cands[c][1]), "is_truth": c == truth} for c in order]

    def candidates(self, unit_key: str) -> list[dict[str, Any]]:
        """Distinct grids of a unit in first-appearance order, with their evidence."""
        return [{"grid": g, "logprobs": lp, "aug_logprobs": aug}
                for g, lp, aug in self._dec.candidates(self._unit(unit_key))]

    def benchmark_selection_algos(self, names: Sequence[str] | None = None, *,
                                  verbose: bool = True) -> list[dict[str, Any]]:
        """Scores algorithms against the known solutions and returns (and prints) a table row
        per algorithm: ``score`` (Kaggle, n_guesses attempts), ``score_1`` (one attempt),
        ``fraction`` (score / tasks), ``oracle`` (units whose truth is among the candidates /
        units), ``mean_rank`` (1-based rank of the truth where this algorithm ranks it)."""
        names = ([names] if isinstance(names, str) else list(names) if names is not None
                 else ALGORITHM_NAMES)
        rows = []
        for name in names:
            st = self._dec.evaluate(*self._spec(name))
            if st["n_units"] == 0:
                raise ArcValueError("benchmark_selection_algos: no unit has a known solution")
            rows.append({
                "algorithm": name,
                "score": st["score"],
                "score_1": st["score_1"],
                "n_tasks": st["n_tasks"],
                "fraction": st["score"] / st["n_tasks"],
                "oracle": st["n_oracle"] / st["n_units"],
                "mean_rank": st["rank_sum"] / st["n_ranked"] if st["n_ranked"] else math.nan,
            })
        if verbose:
            print(format_table(rows, self.n_guesses))
        return rows

    # ---------------------------------------------------------------- stats
    @property
    def n_samples(self) -> int:
        return self._dec.n_samples

    @property
    def n_invalid(self) -> int:
        """Samples that were not valid grids (bad text, ragged or oversized grids)."""
        return self._dec.n_invalid

    @property
    def decode_failures(self) -> dict[str, int]:
        """Invalid text samples by reason (empty, bad_symbol, ragged, too_large, ...)."""
        return dict(self._dec.decode_failures)

    def __repr__(self) -> str:
        return (f"Decoder({len(self.unit_keys)} units, {self.n_samples} samples, "
                f"{self.n_invalid} invalid, n_guesses={self.n_guesses})")


def format_table(rows: Sequence[Mapping[str, Any]], n_guesses: int = 2) -> str:
    head = (f"{'algorithm':<24} {'score@' + str(n_guesses):>9} {'score@1':>8} {'frac':>6} "
            f"{'oracle':>7} {'mean rank':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['algorithm']:<24} {r['score']:>9.2f} {r['score_1']:>8.2f} "
                     f"{r['fraction']:>6.3f} {r['oracle']:>7.3f} {r['mean_rank']:>9.2f}")
    return "\n".join(lines)


def _record_error(records: Sequence[Mapping[str, Any]], e: Exception) -> str:
    # The binding reports "<index> <field>"; word it for the caller here.
    text = str(e.args[0]) if e.args else ""
    index, _, field = text.partition(" ")
    if not index.isdigit():
        return f"add: {text}"
    i = int(index)
    r = records[i]
    where = f"record {i} (key {r.get('key')!r})" if isinstance(r, Mapping) else f"record {i}"
    if isinstance(e, KeyError):
        return f"record {i}: needs 'key' and 'logprob'"
    if field == "text/grid":
        return f"{where}: give exactly one of 'text' and 'grid'"
    return f"{where}: '{field}' has the wrong type"
