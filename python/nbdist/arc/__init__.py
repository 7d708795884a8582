"""nbdist.arc: ARC-AGI data, augmentations, grid text format and the candidate Decoder.

The heavy parts (augmentation, text decoding, grouping, ranking, scoring) run in C++
(``nbdist._core.arc``); this package owns names, defaults, validation and documentation.
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
