"""TrainConfig.shard_optimizer: the sharded AdamW against the whole one, real Gloo ranks."""

from __future__ import annotations

import datetime
import os

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from _ddp_models import (
    TinyGPT,
    build,
    cnn_batches,
    flat_params,
    gpt_batches,
    gpt_overflowing_at,
    loss_of,
)

import nbdist
from nbdist.ddp import TrainConfig, load_checkpoint, train


def _data(name: str, unused: bool = False):
    if unused:  # _SkippingGPT: step 1's four micro-batches all skip the last block, later ones not
        batches = gpt_batches(6, 4)
        for k, (x, _) in enumerate(batches):
            x[0, 0] = int(k == 5)
        return batches
    if name == "cnn":
        return cnn_batches(6, 8)
    return gpt_batches(6, 4, vocab=512 if name == "gpt_wide" else 32)


def _shard_run(name: str, shard: bool, clip: float = 1.0, ckpt_dir: str | None = None,
               max_steps: int = 6, precision: str = "fp32", unused: bool = False) -> dict:
    """One rank: train() `name` for max_steps with tiny buckets (several, parameters across slice
    boundaries), clipping, weight decay and accumulation; the weights, history, whether the
    reducer was sharded during the run and after it."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    if unused:
        torch.manual_seed(0)
        model = _SkippingGPT()
    else:
        model = build(name, seed=0)
    seen = {"during": None}

    def loss_fn(m, batch):
        if hasattr(m, "reducer"):  # the DDP in training; eval runs the bare module
            seen["during"] = m.reducer.sharded
        return loss_of(name, m, batch)

    # A constant schedule: a run cut at 4 steps follows the same learning rates as one of 6.
    cfg = TrainConfig(max_steps=max_steps, grad_accum=2, lr=1e-2, schedule="constant",
                      warmup_steps=1, precision=precision,
                      grad_clip=clip, weight_decay=0.1, log_every=0, bucket_cap_mb=0.004,
                      shard_optimizer=shard, ckpt_dir=ckpt_dir, ckpt_every=2 if ckpt_dir else 0,
                      find_unused_parameters=unused, eval_every=2, eval_steps=1)
    # eval between steps reads the parameters: every slice must have landed by then
    history = train(model, _data(name, unused), cfg, loss_fn=loss_fn,
                    eval_batches=_data(name, unused)[:2])
    params = flat_params(model)
    out = [torch.empty_like(params) for _ in range(dist.get_world_size())]
    dist.all_gather(out, params)
    dist.destroy_process_group()
    return {"params": params, "identical": all(torch.equal(out[0], o) for o in out),
            "norms": [h["grad_norm"] for h in history], "steps": [h["step"] for h in history],
            "evals": [h["eval_loss"] for h in history if h["eval_loss"] is not None],
            "during": seen["during"], "buffers": [b.clone() for b in model.buffers()]}


class _SkippingGPT(TinyGPT):
    """TinyGPT that skips its last block for sequences starting with an even token: its
    parameters go unused on some ranks, or on all of them, in some steps."""

    def forward(self, idx, targets=None):
        if idx[0, 0] % 2:
            return super().forward(idx, targets)
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for blk in self.blocks[:-1]:
            x = blk(x)
        logits = self.lm_head(self.ln_f(x))
        return logits, F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _compare(launch, name: str, nprocs: int, **kw) -> tuple[list[dict], list[dict]]:
    sharded = launch(_shard_run, args=(name, True), kwargs=kw, nprocs=nprocs)
    whole = launch(_shard_run, args=(name, False), kwargs=kw, nprocs=nprocs)
    for s, w in zip(sharded, whole):
        assert s["during"] is True and w["during"] is False
        assert s["identical"]
    return sharded, whole


@pytest.mark.parametrize("name,nprocs", [("gpt_wide", 2), ("cnn", 2), ("gpt", 3)])
def test_sharded_adamw_matches_the_whole_one(launch, name, nprocs):
    sharded, whole = _compare(launch, name, nprocs)
    s, w = sharded[0], whole[0]
    # The same update; only the clip factor's norm is summed in another order.
    assert float((s["params"] - w["params"]).norm() / w["params"].norm()) < 1e-6
    assert s["norms"] == pytest.approx(w["norms"], rel=1e-5)
    assert len(s["evals"]) == 3 and s["evals"] == pytest.approx(w["evals"], rel=1e-5)
    # BatchNorm statistics of forwards through those weights
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6)
               for a, b in zip(s["buffers"], w["buffers"]))


def test_without_clipping_it_is_bitwise_the_whole_one(launch):
    sharded, whole = _compare(launch, "gpt_wide", 2, clip=0.0)
    assert torch.equal(sharded[0]["params"], whole[0]["params"])


def test_unused_parameters_are_left_alone_alike(launch):
    sharded, whole = _compare(launch, "gpt", 2, unused=True)
    assert float((sharded[0]["params"] - whole[0]["params"]).norm()
                 / whole[0]["params"].norm()) < 1e-6


def test_checkpoints_resume_sharded_or_not(launch, tmp_path):
    want = launch(_shard_run, args=("gpt_wide", False, 0.0), nprocs=2)[0]["params"]
    # 4 steps sharded, then on to 6 unsharded: the moments were gathered into whole entries.
    ckpt = str(tmp_path / "a")
    launch(_shard_run, args=("gpt_wide", True, 0.0, ckpt, 4), nprocs=2)
    saved = load_checkpoint(os.path.join(ckpt, "latest.pt"))
    assert saved["adamw.exp_avg.0"].shape == torch.Size([512, 32])  # whole, not a slice
    results = launch(_shard_run, args=("gpt_wide", False, 0.0, ckpt, 6), nprocs=2)
    assert results[0]["steps"] == [5, 6] and torch.equal(results[0]["params"], want)
    # and the other way round, onto 3 ranks' slices
    ckpt = str(tmp_path / "b")
    launch(_shard_run, args=("gpt_wide", False, 0.0, ckpt, 4), nprocs=2)
    results = launch(_shard_run, args=("gpt_wide", True, 0.0, ckpt, 6), nprocs=3)
    assert all(r["steps"] == [5, 6] and r["identical"] for r in results)
    assert not torch.equal(results[0]["params"], want)  # 3 ranks: another global batch
    # sharded on both sides, the same number of ranks: the uninterrupted run, bitwise
    ckpt = str(tmp_path / "c")
    launch(_shard_run, args=("gpt_wide", True, 0.0, ckpt, 4), nprocs=2)
    results = launch(_shard_run, args=("gpt_wide", True, 0.0, ckpt, 6), nprocs=2)
    assert results[0]["steps"] == [5, 6] and torch.equal(results[0]["params"], want)


def _fp16_run(shard: bool):
    # rank 1's step 3 overflows; the other rank's slices see it through the norm
    model, loss_fn = gpt_overflowing_at(1, 6)

    cfg = TrainConfig(max_steps=6, grad_accum=2, lr=1e-2, precision="fp16", log_every=0,
                      init_scale=1024.0, growth_interval=2, shard_optimizer=shard,
                      bucket_cap_mb=0.004)
    history = train(model, gpt_batches(5, 4), cfg, loss_fn=loss_fn)
    dist.destroy_process_group()
    return [(h["skipped"], h["scale"]) for h in history], flat_params(model)


def test_fp16_overflow_on_one_rank_skips_every_slice(launch):
    sharded = launch(_fp16_run, args=(True,), nprocs=2)
    whole = launch(_fp16_run, args=(False,), nprocs=2)
    assert sharded[0][0] == whole[0][0]
    assert [s for s, _ in sharded[0][0]] == [False, False, True, False, False, False]
    assert torch.equal(sharded[0][1], sharded[1][1])
    assert float((sharded[0][1] - whole[0][1]).norm() / whole[0][1].norm()) < 1e-5


def test_one_rank_trains_unsharded(launch):
    (result,) = launch(_shard_run, args=("gpt", True), nprocs=1)
    assert result["during"] is False


def test_shard_optimizer_refuses_a_user_optimizer_and_the_copy_engines():
    model = TinyGPT()
    cfg = TrainConfig(max_steps=1, shard_optimizer=True)
    with pytest.raises(nbdist.DDPValueError, match="ZeroRedundancyOptimizer"):
        train(model, gpt_batches(1, 2), cfg, optimizer=torch.optim.SGD(model.parameters(), lr=1))
    with pytest.raises(nbdist.DDPValueError, match="shard_optimizer needs"):
        train(model, gpt_batches(1, 2), TrainConfig(max_steps=1, shard_optimizer=True,
                                                    transport="peer"))
    with pytest.raises(nbdist.DDPValueError, match="shard_optimizer"):
        train(model, gpt_batches(1, 2), TrainConfig(max_steps=1, shard_optimizer=1))
