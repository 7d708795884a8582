"""DDP.join(): ranks with different numbers of batches, real Gloo ranks against one process."""

from __future__ import annotations

import contextlib
import datetime

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from _ddp_models import build, cnn_batches, flat_params, gpt_batches, loss_of

from nbdist.ddp import DDP

MICRO = 2  # samples (sequences) per micro-batch and rank


class _TwoHeads(nn.Module):
    """A trunk and two heads; a batch picks its head, so some steps leave one head unused on
    some ranks or on all of them."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(6, 8)
        self.heads = nn.ModuleList(nn.Linear(8, 3) for _ in range(2))

    def forward(self, x: torch.Tensor, head: int) -> torch.Tensor:
        return self.heads[head](torch.tanh(self.trunk(x)))


def _model(name: str, seed: int) -> nn.Module:
    if name == "heads":
        torch.manual_seed(seed)
        return _TwoHeads()
    return build(name, seed=seed)


def _rank_batches(name: str, rank: int, steps: int, accum: int) -> list[list[tuple]]:
    """Rank `rank`'s `steps` steps of `accum` micro-batches, its own data."""
    n, seed = steps * accum, 100 + rank
    if name == "heads":
        g = torch.Generator().manual_seed(seed)
        flat = [(torch.randn(MICRO, 6, generator=g), torch.randint(0, 3, (MICRO,), generator=g),
                 (rank + i // accum) % 2 if rank < 2 else 0) for i in range(n)]
    elif name == "cnn":
        flat = cnn_batches(n, MICRO, seed=seed)
    else:
        flat = gpt_batches(n, MICRO, vocab=512 if name == "gpt_wide" else 32, seed=seed)
    return [flat[s * accum:(s + 1) * accum] for s in range(steps)]


def _loss(name: str, model: nn.Module, batch: tuple) -> torch.Tensor:
    if name == "heads":
        x, y, head = batch
        return F.cross_entropy(model(x, head), y)
    return loss_of(name, model, batch)


def _identical(t: torch.Tensor) -> bool:
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return all(torch.equal(out[0], o) for o in out)


def _uneven_rank(name: str, counts: list[int], accum: int = 1, divide: bool = True,
                 spelling: str = "join", eval_each: bool = False, after: int = 0) -> dict:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank()
    model = _model(name, seed=rank)  # DDP replaces every rank's weights with rank 0's
    ddp = DDP(model, bucket_cap_mb=0.01, first_bucket_mb=0.004,
              find_unused_parameters=name == "heads")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=False)
    if spelling == "join":
        block = ddp.join(divide_by_initial_world_size=divide)
    else:  # torch's spelling
        from torch.distributed.algorithms.join import Join
        block = Join([ddp], divide_by_initial_world_size=divide)
    with block:
        for step in _rank_batches(name, rank, counts[rank], accum):
            for m, micro in enumerate(step):
                with ddp.no_sync() if m < accum - 1 else contextlib.nullcontext():
                    (_loss(name, ddp, micro) / accum).backward()
            opt.step()
            opt.zero_grad()
            if eval_each:  # a no-grad forward between steps: no backward to shadow
                with torch.no_grad():
                    _loss(name, ddp, step[0])
    rows_in_join = ddp.reducer.embedding_row_exchanges
    out = {"params": flat_params(model), "identical": _identical(flat_params(model)),
           "buffers_identical": all(_identical(b.float()) for b in model.buffers()),
           "rows_in_join": rows_in_join, "rounds": ddp.reducer.sync_rounds}
    # Even steps after the block: plain DDP again (no join collectives, rows exchanged again).
    # A new optimizer: the AdamW moments of a rank that joined early missed the last steps.
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    for step in _rank_batches(name, rank + 7, after, 1):
        _loss(name, ddp, step[0]).backward()
        opt.step()
        opt.zero_grad()
    out["after"] = flat_params(model)
    out["after_identical"] = _identical(flat_params(model))
    out["rows_after"] = ddp.reducer.embedding_row_exchanges - rows_in_join
    dist.destroy_process_group()
    return out


def _one_process(name: str, counts: list[int], accum: int = 1, divide: bool = True) -> torch.Tensor:
    """What join() computes: at each step the ranks that still have batches contribute their
    gradients, summed and divided by all ranks (or by those still training)."""
    world = len(counts)
    model = _model(name, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=False)
    data = [_rank_batches(name, r, counts[r], accum) for r in range(world)]
    for t in range(max(counts)):
        active = [r for r in range(world) if counts[r] > t]
        divisor = world if divide else len(active)
        for r in active:
            for micro in data[r][t]:
                (_loss(name, model, micro) / (accum * divisor)).backward()
        opt.step()
        opt.zero_grad()
    return flat_params(model)


def _check(results: list[dict], want: torch.Tensor) -> None:
    for r in results:
        assert r["identical"] and r["buffers_identical"]
        assert float((r["params"] - want).norm() / want.norm()) < 1e-5


@pytest.mark.parametrize("name,counts,accum", [
    ("gpt_wide", [3, 5], 1),  # tied embedding: its rows exchange is off inside join()
    ("cnn", [4, 2], 2),       # BatchNorm buffers; accumulation with no_sync; rank 0 outlasts
    ("heads", [2, 5, 4], 1),  # unused parameters, three ranks joining one by one
])
def test_uneven_inputs_match_one_process(launch, name, counts, accum):
    results = launch(_uneven_rank, args=(name, counts, accum), nprocs=len(counts))
    _check(results, _one_process(name, counts, accum))
    # every rank went through one synchronized backward per step of the longest rank
    assert [r["rounds"] for r in results] == [max(counts)] * len(counts)
    if name == "gpt_wide":
        assert results[0]["rows_in_join"] == 0


def test_average_over_the_ranks_still_training(launch):
    counts = [2, 4]
    results = launch(_uneven_rank, args=("gpt", counts, 1, False), nprocs=2)
    _check(results, _one_process("gpt", counts, divide=False))
    # not the same as dividing by every rank
    assert float((results[0]["params"] - _one_process("gpt", counts)).abs().max()) > 1e-4


def test_torch_join_spelling_and_eval_forwards(launch):
    counts = [5, 2]
    results = launch(_uneven_rank, args=("cnn", counts, 1, True, "torch", True), nprocs=2)
    _check(results, _one_process("cnn", counts))


def test_training_goes_on_as_plain_ddp_after_the_block(launch):
    results = launch(_uneven_rank, args=("gpt_wide", [1, 3], 1, True, "join", False, 2), nprocs=2)
    for r in results:
        assert r["after_identical"]
        assert r["rows_after"] == 2  # the embedding rows exchange is back
        assert not torch.equal(r["after"], r["params"])


def _early_termination_rank(counts: list[int]) -> str:
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank()
    ddp = DDP(_model("gpt", 0))
    try:
        with ddp.join(throw_on_early_termination=True):
            for step in _rank_batches("gpt", rank, counts[rank], 1):
                _loss("gpt", ddp, step[0]).backward()
    except RuntimeError as e:
        return str(e)
    finally:
        dist.destroy_process_group()
    return "no error"


def test_throw_on_early_termination_raises_on_every_rank(launch):
    messages = launch(_early_termination_rank, args=([2, 4],), nprocs=2)
    assert "exhausted all inputs" in messages[0]
    assert "exhausted inputs" in messages[1]


def _bad_join_arguments_rank() -> list[str]:
    from torch.distributed.algorithms.join import Join

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    ddp = DDP(_model("gpt", 0))
    out = []
    for make in (lambda: Join([ddp], divide_by_initial_world_size=True, shadow=True),
                 lambda: Join([ddp], divide_by_initial_world_size="no"),
                 lambda: ddp.join(divide_by_initial_world_size=0),
                 lambda: ddp.join(throw_on_early_termination="yes")):
        try:
            make()
            out.append("no error")
        except Exception as e:  # noqa: BLE001 - the message is the result
            out.append(f"{type(e).__name__}: {e}")
    dist.destroy_process_group()
    return out


def test_bad_join_arguments_are_named(launch):
    unknown, torch_spelling, divide, throw = launch(_bad_join_arguments_rank, nprocs=1)[0]
    assert unknown.startswith("DDPValueError") and "shadow" in unknown
    assert "divide_by_initial_world_size must be True or False, got 'no'" in torch_spelling
    assert "divide_by_initial_world_size must be True or False, got 0" in divide
    assert "throw_on_early_termination must be True or False, got 'yes'" in throw
