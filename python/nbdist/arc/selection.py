"""Selection algorithms: how the Decoder ranks the candidates of one unit.

Notation, for a unit: samples are added in order; invalid ones (text that is not a grid) are
counted and otherwise ignored. Valid samples are de-augmented and grouped into *candidates*
(identical grids), numbered by first appearance. For candidate ``c``: ``n_c`` its sample count,
``ℓ_{c,i}`` the generation log-probabilities of its samples (in add order), ``a_{c,j}`` its ``M``
re-scoring log-probabilities (from the first of its samples that carried any), ``b = -ln
prob_baseline``. Sums run left to right in that order, so results are bit-for-bit reproducible.

=========================  ====================================================================
name                       rank by (higher first; ties: first appearance unless said otherwise)
=========================  ====================================================================
first_only                 the first valid sample's grid only
keep_order                 every valid sample's grid in add order (repeats kept)
keep_order_unique          candidates in first-appearance order
vote                       ``n_c``; ties by ``max_i ℓ_{c,i}``, then first appearance
max_gen_prob               ``max_i ℓ_{c,i}``
probsum                    ``Σ_i exp(ℓ_{c,i})``
probsum_common_shape       probsum, but candidates of the best shape come first; a shape scores
                           ``Σ exp(ℓ)`` of the first sample of each of its candidates (ties: the
                           shape seen first)
max_aug_prob               ``max_j a_{c,j}``  (−∞ without re-scores)
min_aug_prob               ``min_j a_{c,j}``  (−∞ without re-scores)
sum_aug_prob               ``Σ_j exp(a_{c,j})``  (−∞ without re-scores)
product_of_experts         ``Σ_j a_{c,j}``  (−∞ without re-scores; the 2025 paper's rule)
product_of_experts_gen     ``Σ_i (ℓ_{c,i} + b) + Σ_j (a_{c,j} + b)`` (the 2024 winning rule;
                           no re-scores contribute 0)
similarity                 mean cell agreement of ``c`` with the other valid samples of its
                           shape: ``(Σ_d n_d·match(c,d) − cells) / (cells·(m − 1))`` over
                           candidates ``d`` of that shape (``d = c`` included), ``m`` = their
                           samples; 0 when ``m = 1``
=========================  ====================================================================

Aliases (the ARC Prize 2024 winners' notebook names): ``score_all_probsum`` =
probsum_common_shape; ``score_full_probmul_3`` = product_of_experts_gen with ``b = 3`` exactly;
``score_full_probmul`` = product_of_experts_gen with the Decoder's ``prob_baseline``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from .. import _core
from .._errors import ArcValueError

_IDS: dict[str, int] = dict(_core.arc.ALGO_IDS)


class AlgoSpec(NamedTuple):
    name: str             # the canonical name
    algo_id: int          # the C++ enum value
    common_shape: bool    # probsum_common_shape
    baseline: float | None  # fixed b (score_full_probmul_3); None: from prob_baseline


ALGORITHMS: dict[str, AlgoSpec] = {}
for _name in _IDS:
    ALGORITHMS[_name] = AlgoSpec(_name, _IDS[_name], False, None)
ALGORITHMS["probsum_common_shape"] = AlgoSpec("probsum_common_shape", _IDS["probsum"], True, None)

ALIASES: dict[str, AlgoSpec] = {
    "score_all_probsum": ALGORITHMS["probsum_common_shape"],
    "score_full_probmul_3": AlgoSpec("product_of_experts_gen", _IDS["product_of_experts_gen"],
                                     False, 3.0),
    "score_full_probmul": ALGORITHMS["product_of_experts_gen"],
    "poe": ALGORITHMS["product_of_experts"],
}

ALGORITHM_NAMES: list[str] = list(ALGORITHMS)


def resolve(name: str) -> AlgoSpec:
    """The spec of an algorithm or alias name; ArcValueError listing the known names if none."""
    spec = (ALGORITHMS.get(name) or ALIASES.get(name)) if isinstance(name, str) else None
    if spec is None:
        raise ArcValueError(f"unknown selection algorithm {name!r}; known: "
                            f"{', '.join(ALGORITHM_NAMES + list(ALIASES))}")
    return spec


def baseline_of(spec: AlgoSpec, prob_baseline: float) -> float:
    """``b`` for product_of_experts_gen: fixed by an alias, else ``-ln(prob_baseline)``."""
    if spec.baseline is not None:
        return spec.baseline
    return -math.log(prob_baseline)
