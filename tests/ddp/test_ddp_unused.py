"""find_unused_parameters=True: parameters no rank used keep their .grad (None stays None), so an
optimizer with weight decay leaves them alone exactly as in a single process."""

from __future__ import annotations

import datetime

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

from nbdist.ddp import DDP, TrainConfig, train

STEPS = 8
BATCH = 8  # per step, all ranks together
# USE[step][micro][rank]: whether that rank's micro-batch runs the `sometimes` branch. Steps 1 and
# 5 use it on no rank, step 2 on rank 1 only, step 6 on rank 0 only (in a no_sync micro-step when
# there are two micro-batches), the others everywhere.
USE = [
    [[True, True], [True, True]],
    [[False, False], [False, False]],
    [[False, True], [False, True]],
    [[True, True], [False, False]],
    [[True, False], [False, True]],
    [[False, False], [False, False]],
    [[True, False], [False, False]],
    [[True, True], [True, True]],
]


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.sometimes = nn.Linear(8, 8)  # used on some steps, sometimes by one rank only
        self.never = nn.Linear(8, 8)  # used by no rank, ever
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor, use: bool) -> torch.Tensor:
        h = torch.tanh(self.body(x))
        if use:
            h = h + torch.tanh(self.sometimes(h))
        return self.head(h)


def _build() -> _Branchy:
    torch.manual_seed(0)
    return _Branchy()


def _data():
    g = torch.Generator().manual_seed(5)
    return [(torch.randn(BATCH, 4, generator=g), torch.randn(BATCH, 2, generator=g))
            for _ in range(STEPS)]


def _loss(model, x, y, use) -> torch.Tensor:
    return ((model(x, use) - y) ** 2).mean()


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _opt(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)


def _train_ddp(grad_accum: int, as_view: bool):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    model = _build()
    initial_never = [p.detach().clone() for p in model.never.parameters()]
    ddp = DDP(model, find_unused_parameters=True, gradient_as_bucket_view=as_view,
              bucket_cap_mb=0.0005, first_bucket_mb=0.0002)  # several buckets
    opt = _opt(model)
    grads_none = []  # per step: (sometimes.weight.grad is None, never.weight.grad is None)
    sometimes_grads = []
    for step, (x, y) in enumerate(_data()):
        xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
        for m in range(grad_accum):
            xm, ym = xs.chunk(grad_accum)[m], ys.chunk(grad_accum)[m]
            use = USE[step][m][rank]
            if m < grad_accum - 1:
                with ddp.no_sync():
                    (_loss(ddp, xm, ym, use) / grad_accum).backward()
            else:
                (_loss(ddp, xm, ym, use) / grad_accum).backward()
        grads_none.append((model.sometimes.weight.grad is None, model.never.weight.grad is None,
                           model.never.bias.grad is None))
        g = model.sometimes.weight.grad
        sometimes_grads.append(None if g is None else g.clone())
        opt.step()
        opt.zero_grad()
    never_identical = all(torch.equal(p, q) for p, q in zip(model.never.parameters(),
                                                            initial_never))
    dist.destroy_process_group()
    return _flat(model), grads_none, sometimes_grads, never_identical


def _train_reference(grad_accum: int, world: int) -> torch.Tensor:
    """One process on the full batch: the mean over ranks and micro-batches of each shard's loss,
    each shard running the branch as that rank did."""
    model = _build()
    opt = _opt(model)
    for step, (x, y) in enumerate(_data()):
        for r in range(world):
            xs, ys = x.chunk(world)[r], y.chunk(world)[r]
            for m in range(grad_accum):
                xm, ym = xs.chunk(grad_accum)[m], ys.chunk(grad_accum)[m]
                (_loss(model, xm, ym, USE[step][m][r]) / (grad_accum * world)).backward()
        opt.step()
        opt.zero_grad()
    return _flat(model)


@pytest.mark.parametrize("as_view", [True, False], ids=["bucket_view", "grad_copy"])
@pytest.mark.parametrize("grad_accum", [1, 2])
def test_globally_unused_params_are_left_alone_like_one_process(launch, grad_accum, as_view):
    results = launch(_train_ddp, args=(grad_accum, as_view), nprocs=2)
    ref = _train_reference(grad_accum, 2)
    for params, grads_none, _, never_identical in results:
        assert float((params - ref).norm() / ref.norm()) <= 1e-5
        assert never_identical, "a parameter no rank used was changed by AdamW"
        # `never` has no gradient after any backward; `sometimes` only after the steps in which
        # no rank ran it (in any micro-batch).
        assert all(n_w and n_b for _, n_w, n_b in grads_none)
        expect_none = [not any(u for micro in USE[s][:grad_accum] for u in micro)
                       for s in range(STEPS)]
        assert [s for s, _, _ in grads_none] == expect_none
    (p0, _, g0, _), (p1, _, g1, _) = results
    assert torch.equal(p0, p1)
    for a, b in zip(g0, g1):  # partly used steps: the same averaged gradient on both ranks
        assert (a is None and b is None) or torch.equal(a, b)


def _keeps_previous_grad(as_view: bool):
    """A defined .grad of a param no rank uses survives the bucket averaging bit for bit."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank()
    model = _build()
    ddp = DDP(model, find_unused_parameters=True, gradient_as_bucket_view=as_view)
    x, y = torch.randn(4, 4), torch.randn(4, 2)
    # Steps that use `sometimes`, so that its .grad becomes a bucket view (as_view); the second
    # forward rebuilds the buckets once, so the view is final after the second backward.
    for _ in range(2):
        _loss(ddp, x, y, True).backward()
    aliased_before = model.sometimes.weight.grad.data_ptr()
    # Rank-specific values: averaging them would change them.
    g = torch.Generator().manual_seed(100 + rank)
    keep_inplace = torch.randn(8, 8, generator=g)
    keep_fresh = torch.randn(8, 8, generator=g)
    model.sometimes.weight.grad.copy_(keep_inplace)  # in place: stays a bucket view
    model.never.weight.grad = keep_fresh.clone()  # a fresh tensor, not in any bucket
    _loss(ddp, x, y, False).backward()
    return (torch.equal(model.sometimes.weight.grad, keep_inplace),
            torch.equal(model.never.weight.grad, keep_fresh),
            model.sometimes.weight.grad.data_ptr() == aliased_before,
            model.never.bias.grad is None)


@pytest.mark.parametrize("as_view", [True, False], ids=["bucket_view", "grad_copy"])
def test_unused_on_every_rank_keeps_its_previous_grad(launch, as_view):
    for kept_view, kept_fresh, same_tensor, bias_none in launch(_keeps_previous_grad,
                                                                args=(as_view,), nprocs=2):
        assert kept_view and kept_fresh and same_tensor and bias_none


def _train_loop_run(user_opt: bool):
    """train() with find_unused_parameters: its own AdamW (weight decay on), or a momentum SGD
    with weight decay. `sometimes` runs in the first step only, `never` in none."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    model = _build()
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    after_first = {}
    cfg = TrainConfig(max_steps=4, lr=1e-2, weight_decay=0.1, precision="fp32", log_every=0,
                      find_unused_parameters=True)
    calls = [0]

    def loss_fn(m, batch):
        calls[0] += 1
        if calls[0] == 2:  # step 2 starts: step 1's update is done
            after_first.update({n: p.detach().clone() for n, p in model.named_parameters()})
        x, y = batch
        return _loss(m, x, y, calls[0] == 1)

    opt = (torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, weight_decay=0.1)
           if user_opt else None)
    train(model, [(x, y) for x, y in _data()], cfg, loss_fn=loss_fn, optimizer=opt)
    final = dict(model.named_parameters())
    return ({n: torch.equal(p, initial[n]) for n, p in final.items()},
            {n: torch.equal(p, after_first[n]) for n, p in final.items()})


@pytest.mark.parametrize("user_opt", [False, True], ids=["adamw", "user_sgd"])
def test_train_loop_leaves_globally_unused_params_alone(launch, user_opt):
    for since_start, since_step1 in launch(_train_loop_run, args=(user_opt,), nprocs=2):
        assert since_start["never.weight"] and since_start["never.bias"]
        # Updated in step 1, then left alone: no gradient (not a zero one) in steps 2-4, so no
        # decay and no momentum carried on.
        assert not since_start["sometimes.weight"]
        assert since_step1["sometimes.weight"] and since_step1["sometimes.bias"]
        assert not since_step1["body.weight"] and not since_step1["head.weight"]
