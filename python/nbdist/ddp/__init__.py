"""nbdist.ddp: data-parallel training with a C++ reducer and step loop (LibTorch + c10d)."""

try:
    import torch  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised in a torch-less environment
    raise ImportError(
        "nbdist.ddp needs PyTorch: install it (pip install torch) and then rebuild nbdist against "
        "it (pip install --no-build-isolation --force-reinstall nbdist)"
    ) from e

try:
    from .. import _ddp  # noqa: F401
except ImportError as e:  # pragma: no cover - torch installed after nbdist was built
    raise ImportError(
        "nbdist was built without its torch extension (_ddp), or against another torch: reinstall "
        "it with `pip install --no-build-isolation --force-reinstall .` in an environment where "
        f"`import torch` works ({e})"
    ) from e

from .._errors import DDPError, DDPValueError  # noqa: E402
from ._train import TrainConfig, load_checkpoint, train  # noqa: E402
from ._wrapper import DDP  # noqa: E402

__all__ = ["DDP", "DDPError", "DDPValueError", "TrainConfig", "load_checkpoint", "train"]
