"""nbdist.arc: ARC-AGI data, augmentations, grid text format and the candidate Decoder.

The heavy parts (augmentation, text decoding, grouping, ranking, scoring) run in C++
(``nbdist._core.arc``); this package owns names, defaults, validation and documentation.

Quick start (the ARC Prize 2024 winners' notebook, ported by changing its imports)::

    from nbdist.arc import ArcDataset, Decoder, GridFormatter

    arc_test_set = ArcDataset.bundled_evaluation()      # or .from_file(...) / .from_dir(...)
    formatter = GridFormatter()
    decoder = Decoder(formatter, arc_test_set.split_multi_replies(), n_guesses=2,
                      prob_baseline=0.05)
    decoder.add_many(records)   # {"key": "00576224_0.tp.rot1", "text": ..., "logprob": ...}
    submission = arc_test_set.get_submission(decoder.run_selection_algo("score_full_probmul_3"))
    if arc_test_set.is_fake:
        decoder.benchmark_selection_algos(["score_all_probsum", "score_full_probmul_3"])
        arc_test_set.validate_submission(submission)
    arc_test_set.write_submission(submission, "submission.json")   # atomic

Selection algorithms and their formulas: :mod:`nbdist.arc.selection`.
"""

from .._errors import ArcError, ArcValueError
from .augment import DIHEDRAL, Augmentation, augment, split_key
from .dataset import ArcDataset, SubmissionScore, write_json_atomic
from .decoder import Decoder
from .formatter import GridFormatter
from .selection import ALGORITHM_NAMES, ALIASES

__all__ = [
    "ALGORITHM_NAMES",
    "ALIASES",
    "ArcDataset",
    "ArcError",
    "ArcValueError",
    "Augmentation",
    "DIHEDRAL",
    "Decoder",
    "GridFormatter",
    "SubmissionScore",
    "augment",
    "split_key",
    "write_json_atomic",
]
