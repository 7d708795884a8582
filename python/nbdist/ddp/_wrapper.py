"""nbdist.ddp.DDP: a drop-in data-parallel wrapper whose gradient reducer is C++."""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.algorithms.join import Join, Joinable, JoinHook, _JoinConfig

from .. import _ddp
from .._errors import DDPValueError

_NO_HOOK = object()  # a torch whose DDP class has no _active_ddp_module for dynamo to read


def _default_group(process_group: Any) -> Any:
    if process_group is not None:
        return process_group
    if not dist.is_available() or not dist.is_initialized():
        raise DDPValueError(
            "torch.distributed is not initialized: call "
            "torch.distributed.init_process_group('nccl' on GPU or 'gloo' on CPU) in every rank "
            "(nbdist.launch sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT for it) before "
            "wrapping the model in nbdist.ddp.DDP"
        )
    return dist.distributed_c10d._get_default_group()


@torch.compiler.disable  # called from DDP.forward, which torch.compile does not trace either
def _tensors_in(obj: Any) -> list[torch.Tensor]:
    """Every tensor in a (nested) forward output, for the unused-parameter graph walk."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors_in(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors_in(o)]
    if hasattr(obj, "__dataclass_fields__"):
        return [t for k in obj.__dataclass_fields__ for t in _tensors_in(getattr(obj, k))]
    return []


_TRANSPORTS = ("auto", "nccl", "peer", "host")


def _check_device_args(device: torch.device, device_ids: Any, output_device: Any) -> None:
    """torch's DDP arguments that name the module's device (``DDP(model, device_ids=[rank])`` in
    most training scripts): accepted when they name the device the parameters are on, as torch's
    DDP does for a module on one device; anything else is an error rather than ignored."""
    def same(d: Any) -> bool:
        try:
            d = torch.device(d) if not isinstance(d, int) else torch.device(device.type, d)
        except (TypeError, RuntimeError):
            return False
        return d.type == device.type and (d.index is None or d.index == device.index)

    if device_ids is not None:
        ids = list(device_ids) if isinstance(device_ids, (list, tuple)) else None
        if device.type == "cpu" and ids != []:
            raise DDPValueError(f"DDP: device_ids={device_ids!r} for a module on the CPU: "
                                "leave it out (None)")
        if device.type != "cpu" and not (ids is not None and len(ids) == 1 and same(ids[0])):
            raise DDPValueError(f"DDP: device_ids={device_ids!r}, but the parameters are on "
                                f"{device}: pass [{device.index}] or leave it out")
    if output_device is not None and not same(output_device):
        raise DDPValueError(f"DDP: output_device={output_device!r}, but the parameters are on "
                            f"{device}: outputs stay on the module's device")


class _JoinHook(JoinHook):
    """What a rank that has run out of inputs does inside ``join()`` while others still train:
    the collectives of each of their forwards (and of its backward), then the final sync."""

    def __init__(self, ddp: DDP, divide_by_initial_world_size: bool) -> None:
        self.ddp = ddp
        ddp._divide_by_initial_world_size = divide_by_initial_world_size

    def main_hook(self) -> None:
        ddp = self.ddp
        ddp._reducer.prepare_forward()  # a bucket rebuild is a collective: every rank reaches it
        sync, root, _ = ddp._join_round(training=False)
        if ddp.broadcast_buffers and ddp._buffers_list:
            ddp._reducer.broadcast_buffers(ddp._buffers_list, root)
        if sync:
            ddp._reducer.set_joining(True)
            ddp._reducer.shadow_backward()

    def post_hook(self, is_last_joiner: bool) -> None:
        # The last ranks to join trained on every step: their model is the one every rank keeps
        # (the others missed the optimizer steps after they joined).
        ddp = self.ddp
        flag = torch.tensor([ddp._rank if is_last_joiner else -1], device=ddp.join_device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=ddp._group)
        state = [p.data for p in ddp.module.parameters()] + ddp._buffers_list
        ddp._reducer.broadcast_buffers(state, int(flag.item()))
        ddp._reducer.set_joining(False)


class _JoinBlock(contextlib.AbstractContextManager):
    """DDP.join(): torch's Join, after which this DDP's forwards go back to having no join
    collectives (torch's leaves them on until the next Join)."""

    def __init__(self, ddp: DDP, join: Join) -> None:
        self._ddp, self._join = ddp, join

    def __enter__(self) -> Join:
        return self._join.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        try:
            return self._join.__exit__(*exc)
        finally:
            self._ddp._join_config = _JoinConfig.construct_disabled_join_config()
            if self._ddp._reducer is not None:
                self._ddp._reducer.set_joining(False)


class DDP(torch.nn.Module, Joinable):
    """Data-parallel wrapper, a drop-in for ``torch.nn.parallel.DistributedDataParallel``.

    Construction checks that every rank holds the same parameter shapes (raising
    :class:`nbdist.DDPValueError` naming the first mismatch), then copies rank 0's parameters and
    buffers to all ranks. During backward, gradients land in flat buckets (``.grad`` is a view into
    them when ``gradient_as_bucket_view``) whose all-reduces start as soon as each bucket is full,
    so communication overlaps the rest of backward; gradients come out averaged over ranks.
    One averaged backward per forward: a gradient that arrives after it (a second backward
    through the same forward with ``retain_graph=True``, or a backward through the module outside
    the wrapper) raises before it reaches ``.grad``, where torch's DDP would let it accumulate on
    one rank. Accumulate locally with ``no_sync()``. Ranks with different numbers of batches
    train inside ``join()`` (or torch's ``Join([ddp, ...])``) instead of hanging.

    ``torch.compile`` works on the module (``DDP(torch.compile(model))``) or on this wrapper:
    compiled while this DDP runs, the graph is split at bucket boundaries (dynamo's DDP graph
    splitting, ``torch._dynamo.config.optimize_ddp``), so that a compiled backward hands its
    gradients over bucket by bucket rather than all at its end.

    Args:
        module: the model, already on this rank's device.
        process_group: a c10d process group; default: the default group.
        bucket_cap_mb: size of each gradient bucket after the first (MiB).
        first_bucket_mb: size of the first bucket (MiB), small so communication starts early.
        broadcast_buffers: copy rank 0's buffers (e.g. BatchNorm statistics) before each forward.
        find_unused_parameters: walk the autograd graph after each forward so that parameters
            that take no part in the loss do not block the reduction, and all-reduce a small
            bitmap of the parameters each rank used. A parameter used on some ranks gets the
            average as usual (ranks that did not use it contribute zeros, or what ``no_sync``
            accumulated); one that no rank used keeps its ``.grad`` as it was (None stays None),
            so optimizers skip it as in a single process. Without this option such parameters
            raise an error naming them.
        gradient_as_bucket_view: make ``.grad`` a view into the bucket (saves memory and copies).
        transport: what averages the buckets. ``"nccl"``: the process group's all-reduce.
            ``"peer"``: the GPUs' copy engines over CUDA IPC peer access (NVLink or PCIe P2P);
            ``"host"``: the copy engines through pinned shared memory, for GPUs without P2P
            (``NCCL_P2P_DISABLE=1``). Neither copy-engine path runs NCCL kernels beside backward.
            ``"auto"`` (default): ``"host"`` for CUDA ranks on one host without P2P between
            their GPUs (where it beats NCCL's shared-memory path), else the process group (over
            NVLink NCCL costs backward less than peer copies; bench/ddp_throughput.py).
            ``reducer.transport`` says which one runs, and ``reducer.transport_note`` why
            ``"auto"`` chose the process group.
        device_ids, output_device: as in torch's DDP, for scripts that pass them: the one device
            the parameters are on (``[local_rank]``), or None; other values are an error.
        static_graph: taken for scripts written for torch's DDP. The reducer learns the bucket
            order from the first backward whatever it says; a gradient that reaches a parameter
            twice in one backward (reentrant activation checkpointing, which torch allows with
            it) is still an error naming the parameter: use ``use_reentrant=False``.
        embedding_rows: average the gradient of ``nn.Embedding`` lookups by exchanging the
            looked-up rows (every rank's indices and the gradients of the looked-up vectors, one
            all-gather at the end of backward) instead of the whole ``[rows, dim]`` weight
            gradient, whenever that moves fewer bytes (``world_size x lookups < rows``). The
            weight's other uses (a tied output layer) then reach its bucket as soon as backward
            produces them instead of waiting for the lookup, which backward reaches last. The
            result is exact and identical on every rank. Not for ``sparse=True`` or
            ``scale_grad_by_freq=True`` embeddings, weights with hooks of their own, or lookups
            under activation checkpointing (those keep the dense path), nor after two forwards
            before one backward (that round is dense). A weight that also gets a gradient from
            outside the forward (a penalty on it, an output layer applied to the outputs) is
            found in the first backward and keeps the dense path from then on; one that first
            gets such a gradient in a later backward raises an error saying to pass
            ``embedding_rows=False``.
            ``reducer.embedding_row_exchanges`` counts the exchanges (those through the copy
            engines: ``reducer.embedding_copy_engine_exchanges``; their buffers are sized by
            the first backward and rebuilt 1.5x larger when a later one outgrows them).
    """

    def __init__(
        self,
        module: torch.nn.Module,
        process_group: Any = None,
        bucket_cap_mb: float = 25,
        first_bucket_mb: float = 1,
        broadcast_buffers: bool = True,
        find_unused_parameters: bool = False,
        gradient_as_bucket_view: bool = True,
        transport: str = "auto",
        embedding_rows: bool = True,
        device_ids: Any = None,
        output_device: Any = None,
        static_graph: bool = False,
    ) -> None:
        super().__init__()
        Joinable.__init__(self)
        if not isinstance(module, torch.nn.Module):
            raise DDPValueError(f"DDP wraps a torch.nn.Module, got {type(module).__name__}")
        if bucket_cap_mb is None:  # torch's DDP default spelling
            bucket_cap_mb = 25
        for name, value in (("bucket_cap_mb", bucket_cap_mb), ("first_bucket_mb", first_bucket_mb)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
                raise DDPValueError(f"DDP: {name} must be a number > 0 (MiB), got {value!r}")
        if not isinstance(static_graph, bool):
            raise DDPValueError(f"DDP: static_graph must be True or False, got {static_graph!r}")
        if transport not in _TRANSPORTS:
            raise DDPValueError(f"DDP: transport must be one of {_TRANSPORTS}, got {transport!r}")
        group = _default_group(process_group)
        self._group = group
        self._rank = dist.get_rank(group)
        self._world = dist.get_world_size(group)
        self._divide_by_initial_world_size = True
        self.module = module
        self.broadcast_buffers = broadcast_buffers
        self.static_graph = static_graph
        self.find_unused_parameters = find_unused_parameters
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        if not named:
            raise DDPValueError("DDP: the module has no parameters that require grad")
        devices = {p.device for _, p in named}
        if len(devices) > 1:
            raise DDPValueError(
                f"DDP: all parameters must be on one device, found {sorted(map(str, devices))}"
            )
        _check_device_args(next(iter(devices)), device_ids, output_device)
        self._device = next(iter(devices))
        self._buffers_list = [b for _, b in module.named_buffers()]
        self._reducer = _ddp.Reducer(
            [p for _, p in named],
            [n for n, _ in named],
            group,
            bucket_cap_bytes=int(bucket_cap_mb * 2**20),
            first_bucket_bytes=int(first_bucket_mb * 2**20),
            find_unused_parameters=find_unused_parameters,
            gradient_as_bucket_view=gradient_as_bucket_view,
            transport=transport,
            embedding_rows=bool(embedding_rows),
        )
        # Frozen parameters are broadcast too, so that every rank starts from rank 0's model.
        frozen = [(n, p) for n, p in module.named_parameters() if not p.requires_grad]
        self._reducer.verify_and_broadcast(
            [p.data for _, p in frozen] + self._buffers_list,
            [n for n, _ in frozen] + [n for n, _ in module.named_buffers()],
        )
        # torch's DDP attribute name: nanoGPT-style loops set it per micro-step instead of
        # entering no_sync(), and it must have the same effect here.
        self.require_backward_grad_sync = True
        # Read by torch.compile (see forward): where it splits the graphs it compiles (not below
        # its own first piece, 1 MiB, which it refuses to exceed the others).
        self.bucket_bytes_cap = max(int(bucket_cap_mb * 2**20),
                                    getattr(dist, "_DEFAULT_FIRST_BUCKET_BYTES", 1 << 20))

    def _release_reducer(self) -> None:
        """Drops the C++ reducer (its hooks) and the hold on the process group now; for
        train(), which wraps the model itself. The wrapper cannot run forward after this."""
        self._reducer = None
        self._group = None

    @property
    def reducer(self) -> Any:
        """The C++ reducer (counters for tests: allreduce_count, sync_rounds, num_buckets)."""
        return self._reducer

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Accumulate gradients locally: backward passes of forwards run inside skip the
        all-reduce; the first backward outside reduces everything accumulated."""
        previous = self.require_backward_grad_sync
        self.require_backward_grad_sync = False
        try:
            yield
        finally:
            self.require_backward_grad_sync = previous

    def join(self, divide_by_initial_world_size: bool = True, enable: bool = True,
             throw_on_early_termination: bool = False) -> contextlib.AbstractContextManager:
        """Train on uneven inputs: ranks may run out of batches at different steps.

        ``with ddp.join(): for batch in my_batches: ...`` - a rank whose loop has ended waits in
        the ``with`` exit and takes part in the collectives of every forward and backward the
        others still run (its gradients count as zeros), and when the last rank finishes every
        rank takes that rank's parameters and buffers, so all leave the block with the same
        model. As in torch's DDP:

        Args:
            divide_by_initial_world_size: average over every rank (True, the default: a rank
                that has joined contributes zeros), or over the ranks still training (False).
            enable: False turns the block into a no-op (inputs known to be even).
            throw_on_early_termination: raise ``RuntimeError`` on every rank as soon as one runs
                out, instead of going on.

        The optimizer is not DDP's: the state of a rank's optimizer (AdamW's moments) holds
        only the steps that rank took, so to train on after the block with a stateful optimizer,
        rebuild it or copy its state from the last rank to join.
        Each forward inside costs a few small collectives (to learn whether anyone has joined),
        and embedding gradients are averaged densely (``embedding_rows`` is off). Every
        synchronizing forward with grad enabled must be followed by its backward. Other
        :class:`torch.distributed.algorithms.Joinable` objects (``ZeroRedundancyOptimizer``)
        join through ``torch.distributed.algorithms.Join([ddp, optimizer])``.
        """
        for name, value in (("divide_by_initial_world_size", divide_by_initial_world_size),
                            ("enable", enable),
                            ("throw_on_early_termination", throw_on_early_termination)):
            if not isinstance(value, bool):
                raise DDPValueError(f"DDP.join: {name} must be True or False, got {value!r}")
        return _JoinBlock(self, Join([self], enable, throw_on_early_termination,
                                     divide_by_initial_world_size=divide_by_initial_world_size))

    # torch's Joinable interface (Join([ddp, ...]) calls these).
    def join_hook(self, **kwargs: Any) -> JoinHook:
        unknown = set(kwargs) - {"divide_by_initial_world_size"}
        if unknown:
            raise DDPValueError(f"DDP.join_hook: unknown argument(s) {sorted(unknown)}; it takes "
                                "divide_by_initial_world_size")
        divide = kwargs.get("divide_by_initial_world_size", True)
        if not isinstance(divide, bool):
            raise DDPValueError("DDP.join_hook: divide_by_initial_world_size must be True or "
                                f"False, got {divide!r}")
        return _JoinHook(self, divide)

    @property
    def join_device(self) -> torch.device:
        return self._device

    @property
    def join_process_group(self) -> Any:
        return self._group

    def _join_round(self, training: bool, sync: bool = False) -> tuple[bool, int, int]:
        """The flags all-reduce of each forward inside join(): how many ranks synchronize a
        backward, then one flag per rank still training. Returns whether any rank synchronizes,
        the highest rank still training (whose buffers everyone takes) and how many train. A
        rank still training reads the flags (a host sync) only when it needs those numbers."""
        flags = [0] * (self._world + 1)
        if training:
            flags[0], flags[1 + self._rank] = int(sync), 1
        flags_t = torch.tensor(flags, dtype=torch.int32).to(self._device)
        dist.all_reduce(flags_t, group=self._group)
        if training and not ((self.broadcast_buffers and self._buffers_list)
                             or (sync and not self._divide_by_initial_world_size)):
            return sync, 0, 0
        values = flags_t.tolist()
        active = [r for r in range(self._world) if values[1 + r]]
        return values[0] > 0, (active[-1] if active else 0), len(active)

    # Not traced by torch.compile itself (the calls it makes are): the reducer runs eagerly, and
    # the wrapped module, compiled inside or outside, is compiled while this DDP is the one that
    # torch's DDP class reports as running. Dynamo's DDPOptimizer then splits the compiled graph
    # at bucket boundaries (bucket_bytes_cap), so that a compiled backward hands gradients over
    # bucket by bucket instead of all at its very end, and communication overlaps it as in eager.
    @torch.compiler.disable(recursive=False)
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        joining = self._join_config.enable
        if joining:
            Join.notify_join_context(self)  # torch's count of the ranks still training
        self._reducer.prepare_forward()
        root = 0
        if joining:
            sync = torch.is_grad_enabled() and self.require_backward_grad_sync
            _, root, active = self._join_round(True, sync)
            self._reducer.set_joining(True, 0 if self._divide_by_initial_world_size else active)
        if self.broadcast_buffers and self._buffers_list:
            self._reducer.broadcast_buffers(self._buffers_list, root)
        holder = torch.nn.parallel.DistributedDataParallel
        running = getattr(holder, "_active_ddp_module", _NO_HOOK)
        if running is not _NO_HOOK:
            holder._active_ddp_module = self
        try:
            out = self.module(*args, **kwargs)
        finally:
            if running is not _NO_HOOK:
                holder._active_ddp_module = running
        if torch.is_grad_enabled():
            tensors = _tensors_in(out) if self._reducer.wants_outputs else []
            self._reducer.prepare_for_backward(self.require_backward_grad_sync, tensors)
        return out
