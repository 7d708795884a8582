"""nbdist.ddp.DDP against single-process training, with real Gloo ranks."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from _ddp_models import batches_for, build, flat_params, loss_of

import nbdist
from nbdist.ddp import DDP

STEPS = 20
BATCH = 8  # per step, all ranks together


def _init() -> tuple[int, int]:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=__import__("datetime").timedelta(seconds=60))
    return dist.get_rank(), dist.get_world_size()


def _identical_across_ranks(t: torch.Tensor) -> bool:
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return all(torch.equal(out[0], o) for o in out)


def _train_ddp(name: str, grad_accum: int, bucket_cap_mb: float, as_view: bool = True,
               batch_size: int = BATCH, by_flag: bool = False) -> dict:
    rank, world = _init()
    # Ranks start from different weights: DDP must replace them with rank 0's.
    model = build(name, seed=rank)
    ddp = DDP(model, bucket_cap_mb=bucket_cap_mb, first_bucket_mb=bucket_cap_mb / 4,
              gradient_as_bucket_view=as_view)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=False)
    batches = batches_for(name, STEPS, batch_size)
    identical, rounds = [], []
    for batch in batches:
        shard = [t.chunk(world)[rank] for t in batch]
        micro = [[t.chunk(grad_accum)[m] for t in shard] for m in range(grad_accum)]
        before = ddp.reducer.allreduce_count
        for m in range(grad_accum):
            if by_flag:  # nanoGPT's way: torch DDP's attribute instead of no_sync()
                ddp.require_backward_grad_sync = m == grad_accum - 1
                (loss_of(name, ddp, micro[m]) / grad_accum).backward()
            elif m < grad_accum - 1:
                with ddp.no_sync():
                    (loss_of(name, ddp, micro[m]) / grad_accum).backward()
            else:
                (loss_of(name, ddp, micro[m]) / grad_accum).backward()
        rounds.append((ddp.reducer.allreduce_count - before, ddp.reducer.num_buckets))
        opt.step()
        opt.zero_grad()
        identical.append(_identical_across_ranks(flat_params(model)))
    dist.destroy_process_group()
    return {
        "params": flat_params(model),
        "buffers": [b.clone() for b in model.buffers()],
        "identical": identical,
        "rounds": rounds,
        "sync_rounds": ddp.reducer.sync_rounds,
        "rebuilt": ddp.reducer.buckets_rebuilt,
        "embedding": (ddp.reducer.embedding_row_exchanges, ddp.reducer.embedding_dense_exchanges,
                      ddp.reducer.wants_outputs),
    }


def _train_reference(name: str, world: int,
                     batch_size: int = BATCH) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One process. The gradient DDP computes is the mean over ranks of each rank's mean loss;
    BatchNorm statistics follow rank 0's shard (DDP broadcasts rank 0's buffers)."""
    model = build(name, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=False)
    for batch in batches_for(name, STEPS, batch_size):
        if name.startswith("gpt"):  # no batch statistics: the full batch at once
            loss_of(name, model, batch).backward()
        else:
            for r in range(world):
                saved = [b.clone() for b in model.buffers()]
                (loss_of(name, model, [t.chunk(world)[r] for t in batch]) / world).backward()
                if r > 0:
                    for b, s in zip(model.buffers(), saved):
                        b.copy_(s)
        opt.step()
        opt.zero_grad()
    return flat_params(model), [b.clone() for b in model.buffers()]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# (row exchanges, dense exchanges, graph still walked) after training: wte's lookups go as rows
# when the vocabulary is wider than 2 ranks' lookups; wpe (16 rows, 64 lookups a rank) and the
# narrow gpt's wte stay in their buckets, and when no rank has rows to exchange in the first
# backward the exchange (and the graph walk) is off for good.
EMBEDDINGS = {"gpt": (0, 0, False), "gpt_wide": (STEPS, 0, True), "cnn": (0, 0, False)}


@pytest.mark.parametrize("name", ["gpt", "gpt_wide", "cnn"])
def test_two_ranks_match_one_process(launch, name):
    cap_mb = 0.002 if name == "cnn" else 0.02  # several buckets even for these tiny models
    results = launch(_train_ddp, args=(name, 1, cap_mb), nprocs=2)
    ref_params, ref_buffers = _train_reference(name, 2)
    for rank, res in enumerate(results):
        assert all(res["identical"]), f"rank params diverged at steps {res['identical']}"
        assert _rel(res["params"], ref_params) <= 1e-5, (rank, _rel(res["params"], ref_params))
    # Buffers follow rank 0 (the others hold their own last update until the next forward).
    for b, rb in zip(results[0]["buffers"], ref_buffers):
        assert torch.allclose(b.double(), rb.double(), rtol=1e-5, atol=1e-6), (b, rb)
    assert torch.equal(results[0]["params"], results[1]["params"])
    assert all(res["embedding"] == EMBEDDINGS[name] for res in results), results[0]["embedding"]
    # Several buckets, all launched once per step, and rebuilt once from the arrival order.
    for launched, buckets in results[0]["rounds"]:
        assert buckets > 1 and launched == buckets
    assert results[0]["rebuilt"]


# Code for any number of ranks, checked beyond two: 3 ranks (the row exchange pads to the
# largest rank's lookups and all-gathers 3 chunks; BatchNorm buffers follow rank 0).
@pytest.mark.parametrize("name", ["gpt_wide", "cnn"])
def test_three_ranks_match_one_process(launch, name):
    cap_mb = 0.002 if name == "cnn" else 0.02
    results = launch(_train_ddp, args=(name, 1, cap_mb, True, 12), nprocs=3)
    ref_params, ref_buffers = _train_reference(name, 3, batch_size=12)
    for rank, res in enumerate(results):
        assert all(res["identical"]), f"rank params diverged at steps {res['identical']}"
        assert _rel(res["params"], ref_params) <= 1e-5, (rank, _rel(res["params"], ref_params))
        assert res["embedding"] == EMBEDDINGS[name], res["embedding"]
    for b, rb in zip(results[0]["buffers"], ref_buffers):
        assert torch.allclose(b.double(), rb.double(), rtol=1e-5, atol=1e-6), (b, rb)


@pytest.mark.parametrize("as_view, by_flag", [(True, False), (False, False), (True, True)],
                         ids=["bucket_view", "grad_copy", "require_backward_grad_sync"])
def test_grad_accum_reduces_once_per_step(launch, as_view, by_flag):
    # The wide GPT: its embedding rows are exchanged on top of what no_sync accumulated.
    results = launch(_train_ddp, args=("gpt_wide", 4, 0.02, as_view, BATCH, by_flag), nprocs=2)
    ref_params, _ = _train_reference("gpt_wide", 2)
    for res in results:
        assert res["embedding"] == EMBEDDINGS["gpt_wide"]
        # One bucketed all-reduce round per optimizer step, none on the no_sync micro-steps.
        assert res["sync_rounds"] == STEPS
        assert all(launched == buckets for launched, buckets in res["rounds"])
        assert _rel(res["params"], ref_params) <= 1e-5
        assert all(res["identical"])


def _assert_match(results: list[dict], reference: torch.nn.Module) -> None:
    """Every rank's parameters: the same on all ranks after each step, and the one process's."""
    want = flat_params(reference)
    for res in results:
        assert all(res["identical"])
        assert _rel(res["params"], want) <= 1e-5, _rel(res["params"], want)


def _uneven_lookups(sequences: tuple[int, ...], steps: int) -> dict:
    """Each rank looks up a different number of tokens per step (sequences[rank] sequences)."""
    rank, world = _init()
    model = build("gpt_wide", seed=rank)
    ddp = DDP(model, bucket_cap_mb=0.02, first_bucket_mb=0.005)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=False)
    identical = []
    for x, y in batches_for("gpt_wide", steps, sum(sequences)):
        mine = slice(sum(sequences[:rank]), sum(sequences[:rank + 1]))
        loss_of("gpt_wide", ddp, (x[mine], y[mine])).backward()
        opt.step()
        opt.zero_grad()
        identical.append(_identical_across_ranks(flat_params(model)))
    dist.destroy_process_group()
    return {"params": flat_params(model), "identical": identical,
            "embedding": (ddp.reducer.embedding_row_exchanges,
                          ddp.reducer.embedding_dense_exchanges)}


# 2 and 3 sequences: both ranks exchange rows, rank 0's padded to rank 1's 48 lookups. 1 and 20:
# rank 1's 320 lookups x 2 ranks are more than the 512 rows, so it keeps its part in the bucket
# while rank 0 took its rows out: those go through a dense all-reduce instead. The same on 3
# ranks: 1, 2 and 4 sequences (padded to 64 lookups), and 1, 1 and 12 (3 x 192 > 512 rows).
@pytest.mark.parametrize("sequences,rows", [((2, 3), True), ((1, 20), False),
                                            ((1, 2, 4), True), ((1, 1, 12), False)],
                         ids=["padded_rows", "dense_fallback", "3_padded_rows", "3_dense_fallback"])
def test_embedding_rows_with_uneven_lookups(launch, sequences, rows):
    steps = 6
    results = launch(_uneven_lookups, args=(sequences, steps), nprocs=len(sequences))
    # One process: the average over ranks of each rank's mean loss.
    model = build("gpt_wide", seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=False)
    for x, y in batches_for("gpt_wide", steps, sum(sequences)):
        bounds = [sum(sequences[:r]) for r in range(len(sequences) + 1)]
        loss = sum(loss_of("gpt_wide", model, (x[a:b], y[a:b]))
                   for a, b in zip(bounds, bounds[1:])) / len(sequences)
        loss.backward()
        opt.step()
        opt.zero_grad()
    _assert_match(results, model)
    for res in results:
        assert res["embedding"] == ((steps, 0) if rows else (0, steps))


class _Lookups(torch.nn.Module):
    """An untied embedding looked up twice (padding index 0), and one no rank ever uses; with
    `checkpointed`, the lookups run under activation checkpointing."""

    def __init__(self, checkpointed: bool = False) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(512, 16, padding_idx=0)
        self.spare = torch.nn.Embedding(512, 16)
        self.head = torch.nn.Linear(16, 4)
        self.checkpointed = checkpointed

    def _pooled(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.emb(a).mean(1) + 2 * self.emb(b).mean(1))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.checkpointed:
            from torch.utils.checkpoint import checkpoint

            return self.head(checkpoint(self._pooled, a, b, use_reentrant=False))
        return self.head(self._pooled(a, b))


def _lookup_batches(steps: int):
    g = torch.Generator().manual_seed(7)
    a = torch.randint(0, 512, (steps, 8, 6), generator=g)
    a[:, :, 0] = 0  # padding in every row
    return [(a[s], torch.randint(1, 512, (8, 3), generator=g),
             torch.randint(0, 4, (8,), generator=g)) for s in range(steps)]


def _lookup_step(model, batch) -> torch.Tensor:
    a, b, y = batch
    return torch.nn.functional.cross_entropy(model(a, b), y)


def _train_lookups(steps: int, checkpointed: bool) -> dict:
    rank, world = _init()
    torch.manual_seed(rank)
    model = _Lookups(checkpointed)
    ddp = DDP(model, bucket_cap_mb=0.01, first_bucket_mb=0.01, find_unused_parameters=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=False)
    identical = []
    for batch in _lookup_batches(steps):
        _lookup_step(ddp, [t.chunk(world)[rank] for t in batch]).backward()
        opt.step()
        opt.zero_grad()
        identical.append(_identical_across_ranks(flat_params(model)))
    dist.destroy_process_group()
    return {"params": flat_params(model), "identical": identical,
            "rows": ddp.reducer.embedding_row_exchanges,
            "spare_grad": model.spare.weight.grad, "padding_row": model.emb.weight[0].clone()}


# Checkpointed lookups save their indices through hooks that may only run in backward: the
# weight keeps the dense path (no row exchange), with the same result.
@pytest.mark.parametrize("checkpointed", [False, True], ids=["plain", "checkpointed"])
def test_untied_embedding_looked_up_twice_with_padding(launch, checkpointed):
    steps = 8
    results = launch(_train_lookups, args=(steps, checkpointed), nprocs=2)
    torch.manual_seed(0)
    model = _Lookups()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=False)
    for batch in _lookup_batches(steps):
        _lookup_step(model, batch).backward()
        opt.step()
        opt.zero_grad()
    _assert_match(results, model)
    for res in results:
        # emb's two lookups as rows; spare, never used, has none
        assert res["rows"] == (0 if checkpointed else steps)
        assert res["spare_grad"] is None
        assert not res["padding_row"].any()  # the padding index gets no gradient


def _penalty(model: torch.nn.Module) -> torch.Tensor:
    return 1e-3 * model.wte.weight.pow(2).sum()


def _two_forwards_or_outside_use(case: str, steps: int) -> dict:
    """gpt_wide, two ways of reaching the embedding's gradient that the row exchange does not
    see coming: two forwards before one backward, and a use of the tied weight after forward
    (in every step, or from the second step on)."""
    rank, world = _init()
    model = build("gpt_wide", seed=rank)
    ddp = DDP(model, bucket_cap_mb=0.02, first_bucket_mb=0.005)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=False)
    identical = []
    for step, (x, y) in enumerate(batches_for("gpt_wide", steps, BATCH)):
        x, y = x.chunk(world)[rank], y.chunk(world)[rank]
        if case == "two_forwards":
            loss = sum(loss_of("gpt_wide", ddp, (a, b)) for a, b in zip(x.chunk(2), y.chunk(2)))
        elif case == "outside" or step > 0:
            loss = loss_of("gpt_wide", ddp, (x, y)) + _penalty(model)
        else:
            loss = loss_of("gpt_wide", ddp, (x, y))
        try:
            loss.backward()
        except RuntimeError as e:
            dist.destroy_process_group()
            return {"error": str(e)}
        opt.step()
        opt.zero_grad()
        identical.append(_identical_across_ranks(flat_params(model)))
    dist.destroy_process_group()
    return {"params": flat_params(model), "identical": identical,
            "rows": ddp.reducer.embedding_row_exchanges,
            "dense": ddp.reducer.embedding_dense_exchanges}


def test_two_forwards_before_one_backward_take_the_dense_path(launch):
    steps = 4
    results = launch(_two_forwards_or_outside_use, args=("two_forwards", steps), nprocs=2)
    model = build("gpt_wide", seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=False)
    for x, y in batches_for("gpt_wide", steps, BATCH):
        # Each rank's loss is the sum of its two halves' means; DDP averages over ranks.
        halves = [(a, b) for xr, yr in zip(x.chunk(2), y.chunk(2))
                  for a, b in zip(xr.chunk(2), yr.chunk(2))]
        (sum(loss_of("gpt_wide", model, h) for h in halves) / 2).backward()
        opt.step()
        opt.zero_grad()
    _assert_match(results, model)
    assert all(res["rows"] == 0 for res in results)


# A penalty on the tied weight, outside the forward: the first backward finds it (the graph walk
# from the outputs cannot) and that weight keeps the dense path, with the same result as one
# process. Without the pre-hook that keeps it aside, it would land in a bucket already sent.
def test_embedding_weight_used_outside_forward_keeps_the_dense_path(launch):
    steps = 4
    results = launch(_two_forwards_or_outside_use, args=("outside", steps), nprocs=2)
    model = build("gpt_wide", seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=False)
    for batch in batches_for("gpt_wide", steps, BATCH):
        (loss_of("gpt_wide", model, batch) + _penalty(model)).backward()
        opt.step()
        opt.zero_grad()
    _assert_match(results, model)
    for res in results:
        assert "error" not in res
        assert res["rows"] == 0 and res["dense"] == 1  # the first backward only, then its bucket


def test_embedding_weight_used_outside_forward_only_later_is_a_clear_error(launch):
    for res in launch(_two_forwards_or_outside_use, args=("outside_later", 3), nprocs=2):
        assert "received a gradient from outside the wrapped module's forward" in res["error"]
        assert "synchronizing backward 2 but not in the first" in res["error"]
        assert "embedding_rows=False" in res["error"]


def _mismatched_model() -> tuple[str, str]:
    rank, _ = _init()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3 if rank == 0 else 5))
    try:
        DDP(model)
    except nbdist.DDPValueError as e:
        return type(e).__name__, str(e)
    return "no error", ""


def test_mismatched_shapes_name_the_parameter_and_rank(launch):
    for kind, message in launch(_mismatched_model, args=(), nprocs=2):
        assert kind == "DDPValueError"
        assert "'1.weight'" in message and "rank 1" in message and "[5, 8]" in message


class _TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(4, 4)
        self.used = torch.nn.Linear(4, 1)
        self.unused = torch.nn.Linear(4, 1)

    def forward(self, x):
        return self.used(self.body(x))


def _unused_params(find_unused: bool):
    rank, _ = _init()
    torch.manual_seed(0)
    model = _TwoHeads()
    ddp = DDP(model, find_unused_parameters=find_unused)
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(rank))
    try:
        for _ in range(2):
            ddp(x).sum().backward()
    except RuntimeError as e:
        return str(e)
    return [p.grad for p in model.parameters()], ddp.reducer.sync_rounds


def test_unused_parameters(launch):
    for message in launch(_unused_params, args=(False,), nprocs=2):
        assert isinstance(message, str)
        assert "unused.weight" in message and "find_unused_parameters=True" in message
    results = launch(_unused_params, args=(True,), nprocs=2)
    (g0, rounds0), (g1, _) = results
    assert rounds0 == 2
    # Reference: the mean over ranks of the two backward passes' gradients.
    torch.manual_seed(0)
    ref = _TwoHeads()
    for rank in range(2):
        x = torch.randn(6, 4, generator=torch.Generator().manual_seed(rank))
        for _ in range(2):
            (ref(x).sum() / 2).backward()
    # No rank used `unused`: its grads stay None, as in the single process.
    for (name, p), a, b in zip(ref.named_parameters(), g0, g1):
        if p.grad is None:
            assert a is None and b is None, name
        else:
            assert torch.equal(a, b) and torch.allclose(a, p.grad, rtol=1e-5, atol=1e-6), name
    assert sum(p.grad is None for p in ref.parameters()) == 2


class _Branch(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 1)
        self.b = torch.nn.Linear(4, 1)

    def forward(self, x, use_b: bool):
        y = self.a(x).sum()
        return y + self.b(x).sum() if use_b else y


def _used_on_one_rank() -> str:
    rank, _ = _init()
    torch.manual_seed(0)
    ddp = DDP(_Branch())
    x = torch.randn(6, 4)
    try:
        for _ in range(3):
            ddp(x, use_b=rank == 1).backward()
    except RuntimeError as e:
        return str(e)
    return "no error"


# A data-dependent branch: `b` is used on rank 1 only. Rank 0 sends its remaining buckets
# before raising, so the ranks' collectives still line up: an error naming the parameters, not a
# Gloo abort (mismatched all-reduce sizes) of the process.
def test_parameter_used_on_one_rank_only_is_an_error_not_a_crash(launch):
    rank0, rank1 = launch(_used_on_one_rank, args=(), nprocs=2)
    assert "rank 0: these parameters received no gradient" in rank0, rank0
    assert "b.weight, b.bias" in rank0 and "find_unused_parameters=True" in rank0
    assert rank1 != "no error"  # its peer stopped: its next collective fails


def _late_gradient(case: str) -> dict:
    """A gradient that reaches a parameter after its forward's backward was averaged."""
    rank, _ = _init()
    model = build("cnn", seed=0)
    ddp = DDP(model)
    x, y = [t.chunk(2)[rank] for t in batches_for("cnn", 1, BATCH)[0]]
    loss = loss_of("cnn", ddp, (x, y))
    loss.backward(retain_graph=True)
    averaged = [p.grad.clone() for p in model.parameters()]
    try:
        if case == "retain_graph":
            loss.backward()
        else:  # the module itself, outside the wrapper
            loss_of("cnn", model, (x, y)).backward()
        error = "no error"
    except RuntimeError as e:
        error = str(e)
    untouched = all(torch.equal(a, p.grad) for a, p in zip(averaged, model.parameters()))
    # The next forward through DDP is a fresh start: a synced step works as usual.
    model.zero_grad()
    loss_of("cnn", ddp, (x, y)).backward()
    identical = _identical_across_ranks(torch.cat([p.grad.flatten() for p in model.parameters()]))
    dist.destroy_process_group()
    return {"error": error, "untouched": untouched, "identical_after": identical}


# torch's DDP lets such a gradient accumulate on one rank only, and the ranks drift apart
# silently; nbdist's refuses it before it reaches .grad.
@pytest.mark.parametrize("case", ["retain_graph", "module_outside_wrapper"])
def test_gradient_after_the_backward_was_averaged_is_refused(launch, case):
    for res in launch(_late_gradient, args=(case,), nprocs=2):
        assert "received a gradient after this forward's backward pass was already averaged" in \
            res["error"], res["error"]
        assert "no_sync()" in res["error"]
        assert res["untouched"] and res["identical_after"]


def test_uninitialized_process_group_is_a_clear_error():
    assert not dist.is_initialized()
    with pytest.raises(nbdist.DDPValueError, match="init_process_group"):
        DDP(torch.nn.Linear(2, 2))


def _device_args() -> list:
    _init()
    model = torch.nn.Linear(4, 2)
    out = []
    for kw in (dict(device_ids=None, output_device=None), dict(device_ids=[]),
               dict(output_device="cpu"), dict(bucket_cap_mb=None), dict(device_ids=[0]),
               dict(output_device="cuda:0"), dict(bucket_cap_mb="25"), dict(static_graph=True),
               dict(static_graph="yes")):
        try:
            DDP(model, **kw)
            out.append("ok")
        except nbdist.DDPValueError as e:
            out.append(str(e))
    dist.destroy_process_group()
    return out


# Training scripts written for torch's DDP pass device_ids=[local_rank] (accepted when it names
# the parameters' device, an error otherwise, not silently ignored) and bucket_cap_mb=None.
def test_torch_ddp_device_arguments(launch):
    for out in launch(_device_args, args=(), nprocs=2):
        assert out[:4] == ["ok", "ok", "ok", "ok"]
        assert "device_ids=[0] for a module on the CPU: leave it out" in out[4]
        assert "output_device='cuda:0', but the parameters are on cpu" in out[5]
        assert "bucket_cap_mb must be a number > 0 (MiB), got '25'" in out[6]
        assert out[7] == "ok"
        assert "static_graph must be True or False, got 'yes'" in out[8]
    from nbdist.ddp._wrapper import _check_device_args

    gpu1 = torch.device("cuda", 1)
    for ok in (dict(device_ids=[1]), dict(device_ids=(gpu1,)), dict(output_device=1),
               dict(device_ids=["cuda:1"], output_device="cuda:1")):
        _check_device_args(gpu1, ok.get("device_ids"), ok.get("output_device"))
    for bad, message in ((dict(device_ids=[0]), r"device_ids=\[0\], but the parameters are on "
                                                r"cuda:1: pass \[1\]"),
                         (dict(device_ids=[1, 0]), "pass"), (dict(device_ids=1), "pass"),
                         (dict(output_device="cuda:0"), "output_device")):
        with pytest.raises(nbdist.DDPValueError, match=message):
            _check_device_args(gpu1, bad.get("device_ids"), bad.get("output_device"))


def _transports() -> dict:
    _init()
    model = torch.nn.Linear(4, 2)
    out = {"auto": DDP(model).reducer.transport}
    for transport in ("peer", "host", "bogus"):
        try:
            DDP(model, transport=transport)
            out[transport] = "no error"
        except nbdist.DDPValueError as e:
            out[transport] = str(e)
    return out


@pytest.mark.parametrize("nprocs", [1, 2])
def test_transport_choice_on_cpu(launch, nprocs):
    # CPU ranks: "auto" is the process group; the copy-engine paths say why they cannot run,
    # one rank included (it never sets up a copy engine, and once took them without a word).
    for out in launch(_transports, args=(), nprocs=nprocs):
        assert out["auto"] == "gloo"
        for path in ("peer", "host"):
            assert f"transport='{path}' needs CUDA parameters; these are on cpu" in out[path]
        assert "transport must be one of" in out["bogus"] and "'bogus'" in out["bogus"]


def _transport_mismatch() -> str:
    rank, _ = _init()
    try:
        DDP(torch.nn.Linear(4, 2), transport="auto" if rank == 0 else "nccl")
    except nbdist.DDPValueError as e:
        return str(e)
    return "no error"


def test_transport_mismatch_across_ranks_is_a_clear_error(launch):
    # The copy-engine set-up is collective: ranks asking for different transports must fail
    # together, before it, instead of hanging in mismatched collectives.
    for message in launch(_transport_mismatch, args=(), nprocs=2):
        assert ("transport differs across ranks: rank 1 asked for 'nccl', rank 0 for 'auto'"
                in message)
