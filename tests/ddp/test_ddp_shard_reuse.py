"""A DDP the user built, passed to train(shard_optimizer=True): what it was doing before, and
that it is a plain averaging DDP again after."""

from __future__ import annotations

import datetime

import pytest
import torch
import torch.distributed as dist
from _ddp_models import build, flat_params, gpt_batches, loss_of

from nbdist.ddp import DDP, TrainConfig, train


def _forward_then_train(shard: bool) -> dict:
    """A notebook's cell order: wrap, look at the initial loss (a forward with grad enabled and
    no backward), then train, then a few plain DDP steps on each rank's own data."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank()
    model = build("gpt", seed=0)
    ddp = DDP(model, bucket_cap_mb=0.004, first_bucket_mb=0.002)
    initial = loss_of("gpt", ddp, gpt_batches(1, 2, seed=9)[0]).item()
    error = None
    try:
        train(ddp, gpt_batches(6, 4), TrainConfig(max_steps=3, grad_accum=2, lr=1e-2, log_every=0,
                                                  precision="fp32", shard_optimizer=shard))
    except Exception as e:  # noqa: BLE001 - the message is the result
        error = f"{type(e).__name__}: {e}"
    sharded_after = ddp.reducer.sharded
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for batch in gpt_batches(2, 2, seed=50 + rank):
        loss_of("gpt", ddp, batch).backward()
        opt.step()
        opt.zero_grad()
    params = flat_params(model)
    out = [torch.empty_like(params) for _ in range(dist.get_world_size())]
    dist.all_gather(out, params)
    dist.destroy_process_group()
    return {"error": error, "initial": initial, "sharded_after": sharded_after, "params": params,
            "identical": all(torch.equal(out[0], o) for o in out)}


def test_a_forward_without_backward_before_sharded_train(launch):
    sharded = launch(_forward_then_train, args=(True,), nprocs=2)
    whole = launch(_forward_then_train, args=(False,), nprocs=2)
    for s in sharded:
        assert s["error"] is None
        assert s["sharded_after"] is False and s["identical"]
    assert whole[0]["error"] is None
    assert float((sharded[0]["params"] - whole[0]["params"]).norm()
                 / whole[0]["params"].norm()) < 1e-6


def _stale_gradients_then_train(stale: bool) -> torch.Tensor:
    """A backward through the DDP outside train() without zero_grad(), then train()."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    model = build("gpt", seed=0)
    ddp = DDP(model)
    if stale:
        (1e3 * loss_of("gpt", ddp, gpt_batches(1, 2, seed=9)[0])).backward()
    train(ddp, gpt_batches(4, 4), TrainConfig(max_steps=2, lr=1e-2, log_every=0,
                                              precision="fp32"))
    dist.destroy_process_group()
    return flat_params(model)


def test_gradients_from_before_train_are_not_part_of_its_first_step(launch):
    stale = launch(_stale_gradients_then_train, args=(True,), nprocs=2)
    fresh = launch(_stale_gradients_then_train, args=(False,), nprocs=2)
    assert torch.equal(stale[0], fresh[0])


class _Transposed(torch.nn.Module):
    """A parameter stored transposed (not contiguous): its slices would not line up with its
    gradient's."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(3, 4).t())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.w).square().mean()


class _SharedMemory(torch.nn.Module):
    """Two Parameters over one tensor's memory (not one Parameter under two names)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.randn(4, 3))
        self.b = torch.nn.Parameter(self.a.data)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.a + x @ self.b).square().mean()


def _shard_refused(model_name: str) -> str:
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    model = _Transposed() if model_name == "transposed" else _SharedMemory()
    try:
        train(model, [torch.randn(2, 4) for _ in range(4)],
              TrainConfig(max_steps=1, log_every=0, precision="fp32", shard_optimizer=True),
              loss_fn=lambda m, x: m(x))
    except Exception as e:  # noqa: BLE001 - the message is the result
        return f"{type(e).__name__}: {e}"
    finally:
        dist.destroy_process_group()
    return "no error"


@pytest.mark.parametrize("model_name,expect", [
    ("transposed", "parameter 'w' is not contiguous"),
    ("shared", "parameters 'a' and 'b' share memory"),
])
def test_sharding_that_cannot_be_done_is_an_error_saying_why(launch, model_name, expect):
    for message in launch(_shard_refused, args=(model_name,), nprocs=2):
        assert message.startswith("DDPValueError: TrainConfig.shard_optimizer: the AdamW cannot "
                                  "be sharded here: " + expect), message
