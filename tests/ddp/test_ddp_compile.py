"""nbdist.ddp.DDP with torch.compile (CPU, Gloo, real ranks; AOT autograd without codegen)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from _ddp_models import TinyGPT, flat_params, gpt_batches

from nbdist.ddp import DDP

STEPS = 4
SIZE = dict(vocab=256, d=256)  # about 6.5 MB of parameters: several 1 MiB buckets


def _compiled_rank(where: str, split: bool) -> dict:
    """where: 'inner' (DDP(torch.compile(model)), as nanoGPT does) or 'outer'
    (torch.compile(DDP(model))); split=False turns dynamo's DDP graph splitting off."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch.set_num_threads(1)
    torch._dynamo.config.optimize_ddp = split
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(rank)  # rank 0's weights must win
    model = TinyGPT(**SIZE)
    # Counts the graphs handed to the backend: AOT autograd turns each into one autograd node,
    # whose backward delivers all of that graph's parameter gradients at once.
    counter = CompileCounterWithBackend("aot_eager")
    if where == "inner":
        ddp = DDP(torch.compile(model, backend=counter), bucket_cap_mb=1)
        run = ddp
    else:
        ddp = DDP(model, bucket_cap_mb=1)
        run = torch.compile(ddp, backend=counter)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=False)
    identical = True
    for x, y in gpt_batches(STEPS, 8, vocab=SIZE["vocab"]):
        run(x.chunk(world)[rank], y.chunk(world)[rank])[1].backward()
        opt.step()
        opt.zero_grad()
        p = flat_params(model)
        out = [torch.empty_like(p) for _ in range(world)]
        dist.all_gather(out, p)
        identical &= all(torch.equal(out[0], o) for o in out)
    dist.destroy_process_group()
    return {"params": flat_params(model), "identical": identical, "graphs": counter.frame_count,
            "rounds": ddp.reducer.sync_rounds, "buckets": ddp.reducer.num_buckets}


def _one_process() -> torch.Tensor:
    torch.manual_seed(0)
    model = TinyGPT(**SIZE)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=False)
    for batch in gpt_batches(STEPS, 8, vocab=SIZE["vocab"]):
        model(*batch)[1].backward()
        opt.step()
        opt.zero_grad()
    return flat_params(model)


# Compiled inside or outside the wrapper, the model is compiled while this DDP is the running one,
# so dynamo splits its graph at bucket boundaries: a backward that hands its gradients over graph
# by graph, which the buckets' all-reduces overlap, instead of all of them at its very end. With
# the splitting off it is one graph (what a DDP that dynamo does not know about gets).
@pytest.mark.parametrize("where", ["inner", "outer"])
def test_compiled_model_is_split_at_buckets_and_matches_one_process(launch, where):
    want = _one_process()
    split = launch(_compiled_rank, args=(where, True), nprocs=2)
    whole = launch(_compiled_rank, args=(where, False), nprocs=2)
    for res in split + whole:
        assert res["identical"] and res["rounds"] == STEPS
        rel = float((res["params"] - want).norm() / want.norm())
        assert rel <= 1e-5, rel
    for res in whole:
        assert res["graphs"] == 1
    for res in split:
        assert res["buckets"] > 2 and res["graphs"] > 2, (res["buckets"], res["graphs"])


def _train_compiled(ckpt_dir: str) -> tuple[torch.Tensor, int, list[float]]:
    from torch._dynamo.testing import CompileCounterWithBackend

    from nbdist.ddp import TrainConfig, train

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TinyGPT(**SIZE)
    counter = CompileCounterWithBackend("aot_eager")
    cfg = TrainConfig(max_steps=STEPS, grad_accum=2, lr=1e-2, warmup_steps=1, precision="fp32",
                      log_every=0, bucket_cap_mb=1, ckpt_dir=ckpt_dir, ckpt_every=2)
    history = train(torch.compile(model, backend=counter),
                    gpt_batches(2 * STEPS, 4, vocab=SIZE["vocab"]), cfg)
    return flat_params(model), counter.frame_count, [h["loss"] for h in history]


# train() wraps the compiled model in DDP like any other: split graphs, and a checkpoint that a
# second call resumes from (it has nothing left to do).
def test_train_takes_a_compiled_model(launch, tmp_path):
    results = launch(_train_compiled, args=(str(tmp_path),), nprocs=2)
    for params, graphs, losses in results:
        assert torch.equal(params, results[0][0])
        assert graphs > 2 and len(losses) == STEPS
        assert all(torch.isfinite(torch.tensor(losses)))
    again = launch(_train_compiled, args=(str(tmp_path),), nprocs=2)
    for params, _, losses in again:
        assert torch.equal(params, results[0][0]) and losses == []
