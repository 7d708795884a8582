"""nbdist.ddp.train: the data-parallel training loop (the loop itself runs in C++)."""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import io
import math
import numbers
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Callable

import torch
import torch.distributed as dist

from .. import _ddp
from .._errors import DDPValueError
from ._wrapper import _TRANSPORTS, DDP

_PRECISIONS = ("bf16", "fp16", "fp32", "auto")
_SCHEDULES = ("cosine", "linear", "constant")
# Dense bf16/fp16 tensor-core peak per GPU (FLOP/s), for MFU; matched on the device name.
_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 125e12,
               "T4": 65e12, "V100": 125e12}


@dataclasses.dataclass
class TrainConfig:
    """Settings of :func:`train`. Steps are optimizer steps; learning rates are per step.

    Attributes:
        max_steps: optimizer steps of the whole run (a resumed run counts the ones already done).
        grad_accum: micro-batches per optimizer step (communication happens on the last one).
        lr: peak learning rate; min_lr: final one (default lr / 10).
        warmup_steps: linear warm-up steps; schedule: "cosine", "linear" or "constant" after it.
        weight_decay: AdamW decoupled decay (on tensors of 2+ dims only); betas, eps: AdamW's.
            These three apply to the built-in AdamW only, not to a user ``optimizer``.
        grad_clip: max global gradient norm (0: no clipping).
        precision: "bf16" (autocast), "fp16" (autocast + dynamic loss scaler), "fp32", or
            "auto": bf16 on GPUs that have it, fp16 on those that do not (T4), fp32 on CPU. The
            log's first line says which.
        eval_every, eval_steps: evaluate every N steps (and at the end) on eval_steps batches
            per rank (at least 1 when eval_every is set); the loss is averaged over ranks.
        ckpt_dir, ckpt_every: write ckpt_dir/latest.pt every N steps and at the end (with
            ckpt_every=0: at the end only), atomically.
            ckpt_dir is a str or os.PathLike.
        resume: continue from ckpt_dir/latest.pt when it exists, also on another number of
            ranks: the data goes on after the same number of micro-batches over all ranks
            (rounded down), the global batch becomes this run's, and ranks the checkpoint did
            not have keep their fresh random seed.
        log_every: rank-0 log line every N steps (0: silent). seed: base seed (rank r uses seed+r
            for dropout; data order uses seed on every rank).
        batch_size: micro-batch size per rank when the data is a dataset (not an iterable).
        bucket_cap_mb, find_unused_parameters, transport, embedding_rows: passed to :class:`DDP`
            when train wraps the model.
            Gradients are dropped (set to None) after each step, as ``zero_grad()`` does, so
            with find_unused_parameters a parameter that no rank uses in a step keeps no gradient
            and the optimizer leaves it alone (no decay, no momentum), as in a single process.
        init_scale, growth_interval: fp16 loss scaler (halve on inf/nan, double after N good steps).
        peak_flops: per-device peak for MFU (default: looked up from the GPU name).
        shard_optimizer: shard the built-in AdamW over the ranks (ZeRO stage 1): each rank keeps
            the moments of 1/world of every gradient bucket and updates that slice only; the
            buckets are reduce-scattered instead of all-reduced and the updated slices
            all-gathered into the parameters, so as many bytes cross as before. Saves
            (world-1)/world of the AdamW state on each GPU (2 x 4 bytes per parameter) and of the
            update's work; the result is the same update (to float rounding in the norm), and
            checkpoints are the same files, which resume sharded or not, on any number of ranks.
            Not with a user ``optimizer``; on one rank it does nothing.
    """

    max_steps: int
    grad_accum: int = 1
    lr: float = 3e-4
    min_lr: float | None = None
    warmup_steps: int = 0
    schedule: str = "cosine"
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0
    precision: str = "bf16"
    eval_every: int = 0
    eval_steps: int = 0
    ckpt_dir: str | None = None
    ckpt_every: int = 0
    resume: bool = True
    log_every: int = 10
    seed: int = 0
    batch_size: int | None = None
    bucket_cap_mb: float = 25
    find_unused_parameters: bool = False
    transport: str = "auto"
    embedding_rows: bool = True
    init_scale: float = 65536.0
    growth_interval: int = 2000
    peak_flops: float | None = None
    shard_optimizer: bool = False

    def validate(self) -> None:
        def bad(field: str, why: str) -> DDPValueError:
            return DDPValueError(f"TrainConfig.{field}={getattr(self, field)!r}: {why}")

        # bool is an int to Python, but max_steps=True or lr=True is a slip, not a setting.
        def integer(v: Any) -> bool:
            return isinstance(v, numbers.Integral) and not isinstance(v, bool)

        def finite(v: Any) -> bool:
            return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)

        for f in ("max_steps", "grad_accum", "growth_interval"):
            if not integer(getattr(self, f)) or getattr(self, f) < 1:
                raise bad(f, "must be an integer >= 1")
        for f in ("warmup_steps", "eval_every", "eval_steps", "ckpt_every", "log_every"):
            if not integer(getattr(self, f)) or getattr(self, f) < 0:
                raise bad(f, "must be an integer >= 0")
        if self.eval_every and not self.eval_steps:
            # eval_steps=0 would skip every eval without a word.
            raise bad("eval_steps", f"must be >= 1 when eval_every is set ({self.eval_every}): "
                                    "the number of eval batches per rank in each eval")
        # torch seeds are 64-bit; rank r uses seed + r, and each epoch of a dataset seed + epoch.
        if not integer(self.seed) or not -2**63 <= self.seed < 2**63:
            raise bad("seed", "must be an integer (64-bit)")
        if self.batch_size is not None and (not integer(self.batch_size) or self.batch_size < 1):
            raise bad("batch_size", "must be an integer >= 1 (or None for batched data)")
        if not (finite(self.lr) and self.lr > 0):
            raise bad("lr", "must be a finite number > 0")
        if self.min_lr is not None and not (finite(self.min_lr) and 0 <= self.min_lr <= self.lr):
            raise bad("min_lr", f"must be a number between 0 and lr ({self.lr}), or None for "
                                "lr / 10")
        if not (finite(self.weight_decay) and self.weight_decay >= 0):
            raise bad("weight_decay", "must be a finite number >= 0")
        if not (isinstance(self.betas, (tuple, list)) and len(self.betas) == 2
                and all(finite(b) and 0 <= b < 1 for b in self.betas)):
            raise bad("betas", "must be a pair of numbers in [0, 1), e.g. (0.9, 0.95)")
        if not (finite(self.eps) and self.eps > 0):
            raise bad("eps", "must be a finite number > 0")
        # inf clips nothing, like 0; nan would turn every gradient into nan.
        if not (isinstance(self.grad_clip, numbers.Real) and not isinstance(self.grad_clip, bool)
                and self.grad_clip >= 0):
            raise bad("grad_clip", "must be a number >= 0 (0 disables clipping)")
        if not (finite(self.init_scale) and self.init_scale > 0):
            raise bad("init_scale", "must be a finite number > 0 (the fp16 loss scale to start "
                                    "from)")
        if self.peak_flops is not None and not (finite(self.peak_flops) and self.peak_flops > 0):
            raise bad("peak_flops", "must be a finite number > 0 (FLOP/s per device), or None "
                                    "to look it up from the GPU name")
        if not (finite(self.bucket_cap_mb) and self.bucket_cap_mb > 0):
            raise bad("bucket_cap_mb", "must be a finite number > 0 (MiB)")
        for f in ("resume", "find_unused_parameters", "embedding_rows", "shard_optimizer"):
            if not isinstance(getattr(self, f), bool):
                raise bad(f, "must be True or False")
        for f, allowed in (("schedule", _SCHEDULES), ("precision", _PRECISIONS),
                           ("transport", _TRANSPORTS)):
            if not isinstance(getattr(self, f), str) or getattr(self, f) not in allowed:
                raise bad(f, f"must be one of {allowed}")
        if self.ckpt_dir is not None and not (
                isinstance(self.ckpt_dir, str) or (isinstance(self.ckpt_dir, os.PathLike)
                                                   and isinstance(os.fspath(self.ckpt_dir), str))):
            raise bad("ckpt_dir", "must be a directory path (a str or os.PathLike), or None")
        if self.ckpt_every and not self.ckpt_dir:
            raise bad("ckpt_every", "needs ckpt_dir")
        if self.shard_optimizer and self.transport in ("peer", "host"):
            raise bad("transport", "the copy engines have no reduce-scatter, which "
                                   "shard_optimizer needs: use 'auto' or 'nccl'")


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


def _distributed_sampler(source: Any) -> Any:
    """The DistributedSampler a DataLoader draws from (as its sampler, or inside its batch
    sampler), or None."""
    for owner in (source, getattr(source, "batch_sampler", None)):
        sampler = getattr(owner, "sampler", None)
        if isinstance(sampler, torch.utils.data.DistributedSampler):
            return sampler
    return None


class _BatchStream:
    """One rank's batches with a position that checkpoints can record and restore.

    A map-style dataset (or a tensor / tuple of tensors, taken as a TensorDataset) is shuffled each
    epoch with seed + epoch, identically on all ranks, and rank r takes every world-th sample. A
    DataLoader with a DistributedSampler is used as is (set_epoch(pass), from 0). Any other iterable
    is read by every rank, which keeps every world-th batch; at its end it is iterated again. Each
    pass of an iterable starts from a CPU generator seeded for it (_take). A
    one-shot iterator (a generator: iter(x) is x) cannot be iterated again, so it is read once: a
    seek goes on from where it is, and its end is an error.
    """

    def __init__(self, source: Any, name: str, rank: int, world: int, batch_size: int | None,
                 seed: int, wrap: bool) -> None:
        self.name, self.rank, self.world, self.seed, self.wrap = name, rank, world, seed, wrap
        self.position = 0  # batches this rank has taken
        self._cached_first: Any = None
        self.one_shot = False
        self.sampler = None  # a DataLoader's DistributedSampler
        if isinstance(source, Mapping) or isinstance(source, (str, bytes)):
            # Iterating a dict gives its keys (a str, its characters), never a batch.
            what = (f"a {type(source).__name__} with keys {list(source)[:5]}"
                    if isinstance(source, Mapping) else f"a {type(source).__name__}")
            raise DDPValueError(
                f"{name} is {what}: pass an iterable of batches (a list of tuples or dicts of "
                "tensors, a DataLoader), a map-style dataset (with TrainConfig.batch_size), or a "
                "tensor or tuple of tensors (taken as a TensorDataset, with "
                "TrainConfig.batch_size)")
        if isinstance(source, torch.Tensor):
            source = torch.utils.data.TensorDataset(source)
        elif isinstance(source, tuple) and source and all(isinstance(t, torch.Tensor)
                                                           for t in source):
            source = torch.utils.data.TensorDataset(*source)
        self.source = source
        if isinstance(source, torch.utils.data.Dataset) and hasattr(source, "__len__") and not \
                isinstance(source, torch.utils.data.IterableDataset):
            if batch_size is None:
                raise DDPValueError(f"{name} is a dataset: set TrainConfig.batch_size")
            self.mode = "dataset"
            self.batch_size = batch_size
            self.per_rank = len(source) // world
            self.per_epoch = self.per_rank // batch_size
            if self.per_epoch == 0:
                raise DDPValueError(
                    f"{name} has {len(source)} samples: too few for {world} ranks x batch_size "
                    f"{batch_size} (each rank needs at least one full batch)")
            self._perm_epoch, self._perm = -1, None
        elif isinstance(source, Iterable):
            self.sampler = _distributed_sampler(source)
            self.mode = "loader" if self.sampler is not None else "iterable"
            if self.sampler is not None and (self.sampler.rank, self.sampler.num_replicas) != \
                    (rank, world):
                # Every rank would read the shard of the rank its sampler names: two ranks with
                # the same batches, or a shard nobody reads, and no error.
                raise DDPValueError(
                    f"{name}: its DistributedSampler is for rank {self.sampler.rank} of "
                    f"{self.sampler.num_replicas}, but this is rank {rank} of {world}: build it "
                    "in each rank with num_replicas and rank of that rank (the defaults read "
                    "them from the process group)")
            self._start_pass(0)
            # An iterator that is its own iterator cannot start again (a generator).
            self.one_shot = isinstance(source, Iterator) and iter(source) is source
            if self.one_shot:
                self._it = source
        else:
            raise DDPValueError(
                f"{name} must be an iterable of batches, a map-style dataset, or a tensor (tuple), "
                f"got {type(source).__name__}")

    def _fetch(self) -> Any:
        if self.mode == "dataset":
            epoch, i = divmod(self.position, self.per_epoch)
            if epoch > 0 and not self.wrap:
                return None
            if epoch != self._perm_epoch:
                g = torch.Generator().manual_seed(self.seed + epoch)
                perm = torch.randperm(len(self.source), generator=g)
                self._perm, self._perm_epoch = perm[self.rank::self.world][: self.per_rank], epoch
            idx = self._perm[i * self.batch_size:(i + 1) * self.batch_size].tolist()
            if isinstance(self.source, torch.utils.data.TensorDataset):
                return tuple(t[idx] for t in self.source.tensors)
            return torch.utils.data.default_collate([self.source[j] for j in idx])
        step = 1 if self.mode == "loader" else self.world
        keep = 0 if self.mode == "loader" else self.rank
        batch = None
        for k in range(step):
            item = self._next_item()
            if item is _END:
                # Only a stream that does not wrap (eval) ends: its last group may be short, and
                # the ranks it reaches still take their batch (the others have run out).
                return batch
            if k == keep:
                batch = item
        return batch

    def _next_item(self) -> Any:
        item = self._take()
        if item is not _END or not self.wrap:
            return item
        if self.one_shot and (self._items or self._epoch):
            raise DDPValueError(
                f"{self.name} ran out after {self._items} batches and cannot be restarted: it is "
                f"a one-shot iterator ({type(self.source).__name__}), which train() reads only "
                "once; pass a list or another re-iterable (a dataset, a DataLoader), or an "
                "iterator that yields every batch of the run (max_steps x grad_accum x ranks)")
        self._start_pass(self._epoch + 1)
        item = self._take()
        if item is _END:
            raise DDPValueError(f"{self.name} is empty (rank {self.rank} got no batches)")
        return item

    def _take(self) -> Any:
        """The current pass's next item, or _END."""
        if self._it is not None:
            item = next(self._it, _END)
        else:
            # A pass starts. A DataLoader draws its order (a RandomSampler: shuffle=True) and its
            # workers' seed from the CPU generator, the sampler only at the first item. They draw
            # from a generator seeded for this pass here, not from the training one: every rank
            # shuffles alike, so the batches each keeps are its own share of the pass, and a
            # resumed run meets the same order and worker seeds again, halfway through a pass
            # too. Only the CPU generator is seeded and put back after.
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(self._pass_seed())
                self._it = iter(self.source)
                item = next(self._it, _END)
        if item is not _END:
            self._items += 1
        return item

    def _pass_seed(self) -> int:
        """Per pass; the same on every rank for an iterable that every rank reads whole (it must
        come out in the same order on all), per rank too for a DistributedSampler's loader
        (whose ranks read different samples: their workers' random transforms differ)."""
        rank = self.rank + 1 if self.mode == "loader" else 0
        return (self.seed + self._epoch * 0x9E3779B1 + rank * 0x632BE5AB) % 2**64

    def first(self) -> Any:
        """The next batch without consuming it."""
        if self._cached_first is None:
            self._cached_first = self._fetch()
            if self._cached_first is None:
                raise DDPValueError(f"{self.name} is empty (rank {self.rank} got no batches)")
        return self._cached_first

    def next(self) -> Any:
        if self._cached_first is not None:
            batch, self._cached_first = self._cached_first, None
        else:
            batch = self._fetch()
        if batch is not None:
            self.position += 1
        return batch

    def seek(self, position: int) -> None:
        if self.one_shot:
            self._seek_one_shot(position)
            return
        self._cached_first = None
        if self.mode != "dataset":
            # An iterable can only be replayed; where its length per pass is known, the passes
            # before the one the position falls in are skipped without reading them (each would
            # load every batch of a DataLoader).
            items = position * (1 if self.mode == "loader" else self.world)
            length = self._pass_length()
            epoch, within = divmod(items, length) if length else (0, items)
            self._start_pass(epoch)
            # The batches replayed may draw from the CPU generator (random transforms in this
            # process); the run being resumed drew that before its checkpoint, whose generator
            # state is back already: the replay must not draw again.
            with torch.random.fork_rng(devices=[]):
                for _ in range(within):
                    if self._next_item() is _END:
                        break
        self.position = position

    def _start_pass(self, epoch: int) -> None:
        """A new pass over an iterable source: the sampler's epoch (the same shuffle on every
        rank, whatever set_epoch the caller made before); its iterator is made when the pass's
        first item is taken (_take)."""
        self._epoch = epoch
        self._items = 0  # items taken from this pass
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        self._it = None

    def _pass_length(self) -> int:
        """Items one pass over the source yields, where that is known and fixed: a list or tuple,
        or a DataLoader over a map-style dataset (its length comes from its sampler); else 0."""
        src = self.source
        if isinstance(src, (list, tuple)):
            return len(src)
        if isinstance(src, torch.utils.data.DataLoader) and not isinstance(
                src.dataset, torch.utils.data.IterableDataset):
            return len(src)
        return 0

    def _seek_one_shot(self, position: int) -> None:
        # It cannot be replayed from its start, so it goes on from where it is. The batch that
        # first() peeked (train() looks at the first batch's shapes before the loop resumes) was
        # taken from it already: it counts towards the skip, and is kept when it is the next one.
        if position < self.position:
            raise DDPValueError(
                f"{self.name} cannot go back to batch {position}: it is a one-shot iterator "
                f"({type(self.source).__name__}) already at batch {self.position}; pass a list "
                "or another re-iterable (a dataset, a DataLoader)")
        if position == self.position:
            return
        taken = self.position + (self._cached_first is not None)
        self._cached_first = None
        for _ in range(position - taken):
            self._fetch()
        self.position = position

    def reset(self) -> None:
        self.seek(0)

    def check_restartable(self) -> None:
        """For eval_batches, which every eval reads again from the start: a one-shot iterator
        would give other batches each time and then none, and an empty source no eval at all."""
        if self.one_shot:
            raise DDPValueError(
                f"{self.name} is a one-shot iterator ({type(self.source).__name__}): every eval "
                "starts it again from its first batch, so it must be re-iterable: pass a list, a "
                "dataset or a DataLoader")
        if self.mode == "dataset":
            return  # it has a full batch for each rank (checked above)
        try:
            empty = len(self.source) == 0
        except TypeError:  # no len(): look at a first item (the source is re-iterable)
            empty = next(iter(self.source), _END) is _END
        if empty:
            raise DDPValueError(
                f"{self.name} is empty ({type(self.source).__name__} with no batches): no eval "
                "could run; give it batches, or leave eval_batches out (and eval_every at 0)")


_END = object()


def _call(model: Any, batch: Any) -> Any:
    if isinstance(batch, (list, tuple)):
        return model(*batch)
    if isinstance(batch, dict):
        return model(**batch)
    return model(batch)


def _check_loss(loss: Any, where: str, training: bool) -> torch.Tensor:
    """The loss a loss_fn or forward returned, or an error that says what it was instead (the
    C++ loop would only say that pybind cannot cast it)."""
    phase = "in training" if training else "in eval"
    if not isinstance(loss, torch.Tensor):
        got = "None" if loss is None else f"a {type(loss).__name__} ({loss!r:.60})"
        hint = ("" if not isinstance(loss, numbers.Number) else
                " (a Python number has no gradient: return the tensor, not loss.item())"
                if training else " (return the tensor, not loss.item())")
        raise DDPValueError(
            f"{where} returned {got} {phase}: the loss must be a tensor with one element{hint}")
    if loss.numel() != 1:
        raise DDPValueError(
            f"{where} returned a tensor of shape {list(loss.shape)} {phase}: the loss must be a "
            "tensor with one element (reduce it, e.g. with .mean())")
    if training and not loss.requires_grad:
        raise DDPValueError(
            f"{where} returned a loss without a gradient (requires_grad=False, {loss.dtype}) in "
            "training: compute it from the model's output with autograd on (not under "
            "torch.no_grad(), not from loss.item())")
    return loss


def _loss_from(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor) and out.numel() == 1:
        return out
    if isinstance(out, dict) and isinstance(out.get("loss"), torch.Tensor):
        return out["loss"]
    if isinstance(out, (list, tuple)):
        for o in reversed(out):
            if isinstance(o, torch.Tensor) and o.numel() == 1:
                return o
    if isinstance(getattr(out, "loss", None), torch.Tensor):
        return out.loss
    raise DDPValueError(
        f"the model's output ({type(out).__name__}) holds no scalar loss: return the loss (or "
        "(logits, loss), or a dict with 'loss') from forward, or pass "
        "loss_fn=lambda model, batch: ... to train()")


def _ensure_process_group(device: torch.device) -> bool:
    """Initializes the default group if needed; True when it made a world of one (no launcher)."""
    if dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend)
        return False
    # a plain single process (no launcher): a world of one
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return True


def _check_optimizer(optimizer: Any, module: torch.nn.Module) -> None:
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise DDPValueError(
            f"train(optimizer=...) must be a torch.optim.Optimizer built over the model's "
            f"parameters, got {type(optimizer).__name__}")
    names = {id(p): n for n, p in module.named_parameters()}
    held = set()
    for gi, group in enumerate(optimizer.param_groups):
        for pi, p in enumerate(group["params"]):
            if id(p) not in names:
                raise DDPValueError(
                    f"train(optimizer=...): param_groups[{gi}]['params'][{pi}] (shape "
                    f"{list(p.shape)}) is not a parameter of the model given to train(); build "
                    "the optimizer from this model's parameters()")
            held.add(id(p))
    missing = [n for n, p in module.named_parameters() if p.requires_grad and id(p) not in held]
    if missing:
        listed = ", ".join(missing[:5]) + (f", ... ({len(missing)} in all)"
                                          if len(missing) > 5 else "")
        raise DDPValueError(
            f"train(optimizer=...): the optimizer does not hold these trainable parameters of "
            f"the model: {listed}; add them to the optimizer or set requires_grad=False on them")


def _optimizer_callbacks(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> tuple:
    """step(lr), state() and load(state) for the C++ loop to drive a user optimizer."""
    # The schedule scales each group's own learning rate, as torch's LR schedulers do; the
    # initial_lr they use lives in the param groups, so the state_dict carries it across resume.
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])

    def step(lr: float) -> None:
        factor = lr / cfg.lr
        for group in optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(group["initial_lr"] * factor)
            else:
                group["lr"] = group["initial_lr"] * factor
        optimizer.step()

    def state() -> torch.Tensor:
        buf = io.BytesIO()
        torch.save(optimizer.state_dict(), buf)
        return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)

    def load(saved: torch.Tensor) -> None:
        where = os.path.join(os.fspath(cfg.ckpt_dir or ""), "latest.pt")
        try:
            state_dict = torch.load(io.BytesIO(saved.numpy().tobytes()), weights_only=True)
            optimizer.load_state_dict(state_dict)
        except Exception as e:
            raise DDPValueError(
                f"checkpoint '{where}': the saved optimizer state does not fit this run's "
                f"{type(optimizer).__name__} ({e}); build the same optimizer as the run that "
                "wrote it, or pass resume=False") from e

    return step, state, load


def _peak_flops(device: torch.device) -> float:
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in _PEAK_FLOPS.items() if k in name), 0.0)


def train(
    model: torch.nn.Module,
    train_batches: Any,
    cfg: TrainConfig,
    eval_batches: Any = None,
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None,
    optimizer: Any = None,
) -> list[dict[str, Any]]:
    """Train ``model`` data-parallel on all ranks; returns one dict of metrics per step.

    Call it in every rank (e.g. inside a function given to :func:`nbdist.launch`). The model is
    wrapped in :class:`DDP` (unless it already is one), moved to this rank's GPU when there is one,
    and trained by the C++ loop: micro-batches with communication on the last only, autocast,
    the fp16 loss scaler, global-norm clipping, AdamW (fused where torch has it) or your own
    optimizer, with warm-up and decay, eval averaged over ranks, rank-0 logging, and atomic
    checkpoints that ``resume`` continues from (the same final weights as an uninterrupted run
    on CPU).

    Args:
        model: the module. Without ``loss_fn`` its forward, called as ``model(*batch)`` (or
            ``model(**batch)``), returns the loss, ``(output, loss)``, or a dict with "loss".
        train_batches: an iterable of batches, a map-style dataset (with ``cfg.batch_size``), a
            tensor or tuple of tensors, or a DataLoader with a DistributedSampler. A one-shot
            iterator (a generator) is read once, so it must yield every batch of the run
            (a resumed run skips the ones the checkpoint had consumed). A DataLoader's
            DistributedSampler must be this rank's (its rank and num_replicas); train() calls
            its ``set_epoch`` with 0, 1, ... at each pass, and a resumed run starts at the pass
            and batch it had reached, reading only the batches of that pass before it. Any other
            iterable (a DataLoader without a DistributedSampler) is read whole by every rank,
            which keeps every world-th batch. A DataLoader's shuffle order and its workers' seeds
            come from a seed per pass (cfg.seed, the pass, and the rank for a DistributedSampler),
            so ranks shuffle alike and a resumed run repeats the order and the workers' random
            transforms of the uninterrupted one, unless the DataLoader has a generator of its own.
        cfg: a :class:`TrainConfig`.
        eval_batches: like train_batches, for eval; each eval restarts them, so they must be
            re-iterable (a list, a dataset, a DataLoader; not a generator) and not empty.
        loss_fn: ``loss_fn(model, batch) -> loss`` when the forward does not return the loss.
        optimizer: None for the built-in AdamW (``cfg.weight_decay``, ``betas``, ``eps``), or a
            ``torch.optim.Optimizer`` over all of the model's trainable parameters (create it
            after the model, before calling train). The loop then calls its ``step()`` on the
            averaged, unscaled, clipped gradients (skipped, like AdamW's, on fp16 inf/nan), and
            its state_dict goes into checkpoints and is restored on resume. The schedule still
            applies, as a factor on each param group's own learning rate: at step s a group
            runs at ``initial_lr * lr_s / cfg.lr``, where lr_s is the schedule's value (history
            "lr") and initial_lr is the group's lr when train() first saw it. So a group created
            with lr == cfg.lr follows the schedule exactly, and ``schedule="constant"`` with
            ``warmup_steps=0`` leaves the optimizer's learning rates as they are. Gradients are
            dropped (set to None) after each step, so ``.grad`` is None when train() returns.

    Each history entry has step, loss (this rank), lr (the schedule's), grad_norm, scale, skipped,
    seconds, throughput (tokens/s over all ranks for integer inputs, else samples/s), mfu and
    eval_loss (or None).

    On a GPU the loop does not wait for each step's numbers: clipping, the fp16 loss scaler and
    its skip decision run on the device, and a step's loss, norm, scale and skip reach the host
    (log line, history, the non-finite check) while the next step runs. Checkpoint and last steps
    are read at once. Only a user optimizer in fp16 makes each step wait, to know whether to call
    its ``step()``.
    """
    if not isinstance(cfg, TrainConfig):
        raise DDPValueError(f"cfg must be a nbdist.ddp.TrainConfig, got {type(cfg).__name__}")
    cfg.validate()
    if cfg.eval_every and eval_batches is None:
        raise DDPValueError("TrainConfig.eval_every is set but no eval_batches were given")
    if eval_batches is not None and not cfg.eval_every:
        # They would never be read: a run the user believes is evaluated would not be.
        raise DDPValueError("eval_batches were given but TrainConfig.eval_every is 0, so no eval "
                            "would run: set eval_every (and eval_steps), or leave eval_batches out")
    if not isinstance(model, torch.nn.Module):
        raise DDPValueError(f"train(model=...) must be a torch.nn.Module, got "
                            f"{type(model).__name__}")
    if loss_fn is not None and not callable(loss_fn):
        raise DDPValueError(f"train(loss_fn=...) must be a function (model, batch) -> loss, got "
                            f"{type(loss_fn).__name__}")
    module = model.module if isinstance(model, DDP) else model
    if optimizer is not None:
        _check_optimizer(optimizer, module)
        if cfg.shard_optimizer:
            raise DDPValueError("TrainConfig.shard_optimizer shards train()'s built-in AdamW, not "
                                "a user optimizer: leave optimizer=None, or shard your own with "
                                "torch.distributed.optim.ZeroRedundancyOptimizer")
    first_param = next(module.parameters(), None)
    if first_param is None:
        raise DDPValueError(f"train(model=...): the model ({type(module).__name__}) has no "
                            "parameters, so there is nothing to train")
    device = first_param.device
    ckpt_dir = "" if cfg.ckpt_dir is None else os.fspath(cfg.ckpt_dir)
    if device.type == "cpu" and torch.cuda.is_available():
        # One GPU per rank, whether the launcher shows all GPUs or only this rank's.
        local_rank = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        module.to(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL and autocast follow the current device
    precision = cfg.precision
    if precision == "auto":
        precision = ("fp32" if device.type != "cuda" else
                     "bf16" if torch.cuda.is_bf16_supported() else "fp16")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DDPValueError("TrainConfig.precision='bf16': this GPU has no bf16; use 'fp16' "
                            "(or 'auto')")
    # A world of one made here (no launcher) goes when train() returns: a process forked later
    # (nbdist.launch from the same notebook kernel) must not inherit an initialized group.
    own_group = _ensure_process_group(device)
    made: list[DDP] = []  # the DDP made here, if any
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        # shard_optimizer reduce-scatters through the process group: "auto" must not pick the
        # copy engines.
        transport = "nccl" if cfg.shard_optimizer and cfg.transport == "auto" else cfg.transport
        ddp = model if isinstance(model, DDP) else DDP(
            module, bucket_cap_mb=cfg.bucket_cap_mb,
            find_unused_parameters=cfg.find_unused_parameters, transport=transport,
            embedding_rows=cfg.embedding_rows)
        if ddp is not model:
            made.append(ddp)
        module.train()

        batch_size = None if cfg.batch_size is None else int(cfg.batch_size)
        stream = _BatchStream(train_batches, "train_batches", rank, world, batch_size,
                              int(cfg.seed), wrap=True)
        evals = (None if eval_batches is None else
                 _BatchStream(eval_batches, "eval_batches", rank, world, batch_size, int(cfg.seed),
                              wrap=False))
        if evals is not None:
            evals.check_restartable()
        first = stream.first()
        lead = first[0] if isinstance(first, (list, tuple)) else first
        # Integer inputs are token ids (throughput in tokens/s, MFU possible); otherwise samples/s.
        tokens, unit = 0, "tokens"
        if isinstance(lead, torch.Tensor) and lead.dim() > 0:
            if lead.is_floating_point():
                tokens, unit = lead.shape[0], "samples"
            else:
                tokens = lead.numel()

        def loss_of(m: Any, batch: Any, training: bool) -> torch.Tensor:
            batch = _to_device(batch, device)
            if loss_fn is not None:
                return _check_loss(loss_fn(m, batch), "loss_fn(model, batch)", training)
            return _check_loss(_loss_from(_call(m, batch)), "the model's forward", training)

        def forward_loss(sync: bool) -> torch.Tensor:
            with contextlib.nullcontext() if sync else ddp.no_sync():
                return loss_of(ddp, stream.next(), True)

        def eval_loss() -> torch.Tensor | None:
            batch = evals.next()
            if batch is None:
                # The C++ loop's "this rank's eval batches ran out"; a None from the user's loss_fn
                # never gets here (loss_of raises).
                return None
            module.eval()
            try:  # the bare module: eval batch counts may differ across ranks, so no collectives
                return loss_of(module, batch, False)
            finally:
                module.train()

        # Plain ints and floats for pybind (validate() lets numpy numbers through).
        c = _ddp.TrainConfig()
        c.max_steps, c.grad_accum, c.lr = int(cfg.max_steps), int(cfg.grad_accum), float(cfg.lr)
        c.min_lr = float(cfg.lr / 10 if cfg.min_lr is None else cfg.min_lr)
        c.warmup_steps, c.schedule = int(cfg.warmup_steps), cfg.schedule
        c.weight_decay = float(cfg.weight_decay)
        c.beta1, c.beta2 = (float(b) for b in cfg.betas)
        c.eps, c.grad_clip, c.precision = float(cfg.eps), float(cfg.grad_clip), precision
        c.eval_every, c.eval_steps = int(cfg.eval_every), int(cfg.eval_steps)
        c.ckpt_dir, c.ckpt_every, c.resume = ckpt_dir, int(cfg.ckpt_every), cfg.resume
        c.log_every, c.tokens_per_micro_batch = int(cfg.log_every), float(tokens)
        c.throughput_unit = unit
        fpt = getattr(module, "flops_per_token", 0)
        c.flops_per_token = float(fpt() if callable(fpt) else fpt or 0)
        c.peak_flops = float(cfg.peak_flops if cfg.peak_flops is not None else _peak_flops(device))
        c.init_scale, c.growth_interval = float(cfg.init_scale), int(cfg.growth_interval)
        c.shard_optimizer = cfg.shard_optimizer
        if ckpt_dir:
            os.makedirs(ckpt_dir, exist_ok=True)
            if rank == 0:  # temporary files of writes that died halfway
                for stale in glob.glob(os.path.join(glob.escape(ckpt_dir), "latest.pt.tmp.*")):
                    os.unlink(stale)

        opt_step, opt_state, opt_load = (None, None, None) if optimizer is None else \
            _optimizer_callbacks(optimizer, cfg)
        torch.manual_seed(int(cfg.seed) + rank)
        if rank == 0 and cfg.log_every > 0 and cfg.precision == "auto":
            print(f"precision='auto': {precision} on {device}", flush=True)
        return _ddp.train(
            ddp.reducer, list(module.buffers()), c, forward_loss,
            eval_loss if evals is not None else None,
            (lambda: evals.reset()) if evals is not None else None,
            lambda: stream.position, stream.seek,
            (lambda line: print(line, flush=True)) if rank == 0 else None,
            opt_step, opt_state, opt_load,
        )
    finally:
        # The reducer holds the process group: let both go here and now. Left to the garbage
        # collector (through the frames of a raised error's traceback), they could be collected
        # in a child forked later (a DataLoader worker, a fork rank), where the group's threads do
        # not exist and its destructor hangs.
        for d in made:
            d._release_reducer()
        if own_group and dist.is_initialized():
            dist.destroy_process_group()


def load_checkpoint(path: str) -> dict[str, torch.Tensor] | None:
    """The tensors of a checkpoint written by :func:`train` (None when ``path`` does not exist).
    Keys: param.<i> (registration order), buffer.<i>, adamw.* (the built-in AdamW) or
    optimizer.state_dict (a user optimizer's state_dict as torch.save bytes in a uint8 tensor),
    step, data_position, scaler.*."""
    return _ddp.load_checkpoint(os.fspath(path))
