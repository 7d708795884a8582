"""nbdist.ddp: data-parallel training with a C++ reducer and step loop (LibTorch + c10d).

Two layers:

* :class:`DDP` - a drop-in for ``torch.nn.parallel.DistributedDataParallel`` for your own loop::

      dist.init_process_group("nccl")            # "gloo" on CPU
      model = nbdist.ddp.DDP(model.cuda())
      for step, micro_batches in enumerate(data):
          for i, (x, y) in enumerate(micro_batches):
              with model.no_sync() if i < len(micro_batches) - 1 else contextlib.nullcontext():
                  model(x, y)[1].backward()       # all-reduce only on the last micro-batch
          opt.step(); opt.zero_grad()

* :func:`train` with :class:`TrainConfig` - the whole loop (accumulation, autocast, fp16 loss
  scaling, clipping, AdamW or your own ``torch.optim`` optimizer + schedule, eval, logging, atomic
  checkpoints and resume)::

      def run():
          cfg = nbdist.ddp.TrainConfig(max_steps=1000, grad_accum=4, lr=6e-4, warmup_steps=100,
                                       ckpt_dir="ckpt", ckpt_every=200)
          return nbdist.ddp.train(GPT(), batches, cfg, eval_batches=val)

      history = nbdist.launch(run, nprocs=torch.cuda.device_count())[0]
"""

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
