"""GPU checks (NCCL): run on the GPU machine (bench/device.sh); skipped where CUDA is absent."""

from __future__ import annotations

import datetime
import os

import pytest

# NVML answers "is there a GPU?" without initializing CUDA here, so the launcher may still fork.
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from _ddp_models import TinyGPT, flat_params, gpt_batches

import nbdist  # noqa: E402
from nbdist.ddp import DDP, TrainConfig, train

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
NGPU = min(2, torch.cuda.device_count())


def _size(bucket_mb: float) -> dict:
    """Model size: tiny for tiny buckets; 1.7 MB of gradients (2 buckets) for 1 MiB buckets."""
    return {} if bucket_mb < 0.1 else {"vocab": 256, "d": 128}


def _cuda_rank() -> torch.device:
    """This rank's GPU (whether the launcher shows all GPUs or only this rank's), NCCL, no TF32."""
    local = int(os.environ.get("LOCAL_RANK", os.environ["RANK"])) % torch.cuda.device_count()
    torch.cuda.set_device(local)
    device = torch.device("cuda", local)
    dist.init_process_group("nccl", device_id=device, timeout=datetime.timedelta(seconds=60))
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return device


def _identical_across_ranks(t: torch.Tensor) -> bool:
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return all(torch.equal(out[0], o) for o in out)


def _penalty(model: torch.nn.Module) -> torch.Tensor:
    """A use of the tied embedding outside the forward."""
    return 1e-3 * model.wte.weight.pow(2).sum()


def _one_process(batches, penalty: bool = False, **size) -> torch.Tensor:
    """TinyGPT(**size) trained by AdamW on the full batches in one process (no TF32)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    ref = TinyGPT(**size).cuda()
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    for x, y in batches:
        (ref(x.cuda(), y.cuda())[1] + (_penalty(ref) if penalty else 0)).backward()
        opt.step()
        opt.zero_grad()
    return flat_params(ref).cpu()


def _nccl_rank(steps: int, transport: str, bucket_mb: float, accum: int, as_view: bool):
    rank = int(os.environ["RANK"])
    os.environ["NBDIST_CE_PIECE_KB"] = "64"  # several pieces per chunk once buckets are 1 MiB
    device = _cuda_rank()
    torch.manual_seed(rank)  # rank 0's weights must win
    model = TinyGPT(**_size(bucket_mb)).to(device)
    ddp = DDP(model, bucket_cap_mb=bucket_mb, first_bucket_mb=bucket_mb / 4, transport=transport,
              gradient_as_bucket_view=as_view)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    world = dist.get_world_size()
    identical = True
    for batch in gpt_batches(steps, 8):
        x, y = (t.chunk(world)[rank].to(device) for t in batch)
        for m, (xm, ym) in enumerate(zip(x.chunk(accum), y.chunk(accum))):
            if m < accum - 1:
                with ddp.no_sync():
                    (ddp(xm, ym)[1] / accum).backward()
            else:
                (ddp(xm, ym)[1] / accum).backward()
        opt.step()
        opt.zero_grad()
        identical &= _identical_across_ranks(flat_params(model))
    used = ddp.reducer.transport
    rows = ddp.reducer.embedding_row_exchanges
    dist.destroy_process_group()
    return flat_params(model).cpu(), identical, ddp.reducer.allreduce_count, used, rows


# The process group's all-reduce, and both copy-engine paths (many tiny buckets, and 1 MiB
# buckets in 64 KiB pieces with accumulation under no_sync). as_view=False: .grad is not the
# bucket; the average is copied back into it.
@pytest.mark.parametrize("transport,bucket_mb,accum,as_view", [
    ("nccl", 0.02, 1, True), ("peer", 0.02, 1, True), ("host", 0.02, 1, True),
    ("nccl", 1, 2, True), ("peer", 1, 2, True), ("host", 1, 2, True), ("nccl", 1, 1, False)])
def test_nccl_ranks_match_one_process(launch, transport, bucket_mb, accum, as_view):
    if transport != "nccl" and NGPU < 2:
        pytest.skip("the copy-engine all-reduce needs 2 GPUs")
    steps = 10
    results = launch(_nccl_rank, args=(steps, transport, bucket_mb, accum, as_view), nprocs=NGPU)
    want = _one_process(gpt_batches(steps, 8), **_size(bucket_mb))
    for params, identical, launched, used, rows in results:
        assert used == transport
        assert identical and launched >= steps
        # 256 embedding rows and 32 or 64 lookups a rank: exchanged as rows every step (through
        # the copy engines from the second step on, over NCCL for "nccl"); one rank has nothing
        # to exchange.
        assert rows == (steps if bucket_mb >= 0.1 and NGPU > 1 else 0)
        assert float((params - want).norm() / want.norm()) < 1e-4


def _growing_batches():
    """3 steps of 4 sequences, then 3 of 8: each rank's lookups double after step 3."""
    return gpt_batches(3, 4) + gpt_batches(3, 8, seed=7)


def _small_gpt_rank(transport: str, batches, penalty: bool = False):
    """TinyGPT(vocab=256, d=128) under DDP(transport) on this rank's share of `batches` (with
    the tied-embedding penalty outside the forward); the params, whether the ranks agree, and
    the reducer's embedding counters."""
    rank, device = int(os.environ["RANK"]), _cuda_rank()
    world = dist.get_world_size()
    torch.manual_seed(0)
    model = TinyGPT(vocab=256, d=128).to(device)
    ddp = DDP(model, transport=transport)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for batch in batches:
        x, y = (t.chunk(world)[rank].to(device) for t in batch)
        (ddp(x, y)[1] + (_penalty(model) if penalty else 0)).backward()
        opt.step()
        opt.zero_grad()
    p = flat_params(model)
    r = ddp.reducer
    return (p.cpu(), _identical_across_ranks(p), r.embedding_row_exchanges,
            r.embedding_copy_engine_exchanges, r.embedding_dense_exchanges)


@pytest.mark.parametrize("transport", ["peer", "host"])
def test_copy_engine_rows_regrow_with_the_batch(launch, transport):
    if NGPU < 2:
        pytest.skip("the copy-engine all-reduce needs 2 GPUs")
    results = launch(_small_gpt_rank, args=(transport, _growing_batches()), nprocs=NGPU)
    want = _one_process(_growing_batches(), vocab=256, d=128)
    for params, identical, rows, through_copy_engines, _ in results:
        assert identical and rows == 6
        # Step 1 sizes the gather buffers (its rows go over NCCL), steps 2-3 use them, step 4
        # outgrows them (NCCL again) and the next forward rebuilds them larger for steps 5-6.
        assert through_copy_engines == 4
        assert float((params - want).norm() / want.norm()) < 1e-4


# The first backward finds the penalty on the tied weight (through NCCL's all-reduce, read on
# the host) and that weight keeps the dense path; on the copy-engine path too.
@pytest.mark.parametrize("transport", ["nccl", "host"])
def test_embedding_used_outside_forward_on_gpu(launch, transport):
    if transport != "nccl" and NGPU < 2:
        pytest.skip("the copy-engine all-reduce needs 2 GPUs")
    results = launch(_small_gpt_rank, args=(transport, gpt_batches(6, 8), True), nprocs=NGPU)
    want = _one_process(gpt_batches(6, 8), penalty=True, vocab=256, d=128)
    for params, identical, rows, _, dense in results:
        assert identical and rows == 0 and dense == (1 if NGPU > 1 else 0)
        assert float((params - want).norm() / want.norm()) < 1e-4


def _train_rank(precision: str):
    torch.manual_seed(0)
    model = TinyGPT()
    cfg = TrainConfig(max_steps=30, grad_accum=2, lr=3e-3, warmup_steps=3, precision=precision,
                      log_every=10, init_scale=2.0**16)
    return train(model, gpt_batches(8, 8), cfg)  # train() moves the model to this rank's GPU


@pytest.mark.parametrize("precision", ["bf16", "fp16", "auto"])
def test_train_on_gpu_learns(launch, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    for history in launch(_train_rank, args=(precision,), nprocs=NGPU):
        assert [h["step"] for h in history] == list(range(1, 31))  # each once, in order
        assert history[-1]["loss"] < 0.8 * history[0]["loss"]


def _late_nan_rank(precision: str, nan_at: int):
    """bf16/fp32 on a GPU: a step's loss and norm reach the host one step late."""
    torch.manual_seed(0)
    seen = [0]

    def loss_fn(m, batch):
        seen[0] += 1
        loss = m(*batch)[1]
        return loss * float("nan") if seen[0] == nan_at else loss

    cfg = TrainConfig(max_steps=6, lr=1e-3, precision=precision, log_every=1)
    try:
        train(TinyGPT(), gpt_batches(8, 4), cfg, loss_fn=loss_fn)
    except nbdist.DDPError as e:
        return str(e)
    return "no error"


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_non_finite_step_is_named_though_read_late(launch, precision):
    for message in launch(_late_nan_rank, args=(precision, 3), nprocs=NGPU):
        assert "non-finite gradient at step 3" in message, message


def _fp16_scaler_rank():
    """fp16 on a GPU: the scaler decides on the device, and each step's skip and scale reach the
    host with its loss, one step late."""
    rank = int(os.environ["RANK"])
    torch.manual_seed(0)
    seen, snapshots = [0], []

    def loss_fn(m, batch):
        seen[0] += 1
        snapshots.append(flat_params(m).cpu())
        loss = m(*batch)[1]
        # The last rank's step 3 (micro-batches 5, 6) overflows; the reduced gradient is inf.
        return loss * float("inf") if rank == NGPU - 1 and seen[0] == 6 else loss

    cfg = TrainConfig(max_steps=8, grad_accum=2, lr=1e-2, precision="fp16", log_every=1,
                      init_scale=1024.0, growth_interval=3, grad_clip=1.0)
    model = TinyGPT()
    history = train(model, gpt_batches(5, 4), cfg, loss_fn=loss_fn)
    return history, snapshots, flat_params(model).cpu()


def test_fp16_scaler_runs_on_the_device(launch):
    results = launch(_fp16_scaler_rank, nprocs=NGPU)
    for history, snapshots, _ in results:
        assert [h["step"] for h in history] == list(range(1, 9))
        assert [h["skipped"] for h in history] == [False, False, True] + [False] * 5
        assert [h["scale"] for h in history] == [1024, 1024, 1024, 512, 512, 512, 1024, 1024]
        assert torch.equal(snapshots[4], snapshots[6])  # the skipped step left the weights alone
        assert not torch.equal(snapshots[2], snapshots[4])
        assert all(h["grad_norm"] > 0 for h in history if not h["skipped"])
    assert torch.equal(results[0][2], results[-1][2])


class _GatedGPT(TinyGPT):
    """TinyGPT plus a branch that runs only on batches whose first token is even (so some ranks
    and steps skip it) and a layer that never runs."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = torch.nn.Linear(32, 32)
        self.spare = torch.nn.Linear(32, 32)

    def forward(self, idx, targets=None):
        logits, loss = super().forward(idx, targets)
        if int(idx[0, 0]) % 2 == 0:
            loss = loss + 1e-3 * self.gate(self.wte(idx)).pow(2).mean()
        return logits, loss


def _unused_user_opt_rank():
    torch.manual_seed(0)
    model = _GatedGPT()
    spare = [p.detach().clone() for p in model.spare.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)
    cfg = TrainConfig(max_steps=6, grad_accum=2, lr=0.05, precision="fp32", log_every=0,
                      find_unused_parameters=True)
    train(model, gpt_batches(8, 4), cfg, optimizer=opt)  # NCCL: the used-bitmap lives on the GPU
    params = flat_params(model)
    out = [torch.empty_like(params) for _ in range(dist.get_world_size())]
    dist.all_gather(out, params)
    return (all(torch.equal(out[0], o) for o in out),
            all(torch.equal(p.cpu(), s) for p, s in zip(model.spare.parameters(), spare)))


def test_unused_parameters_with_user_optimizer_on_gpu(launch):
    for identical, spare_untouched in launch(_unused_user_opt_rank, args=(), nprocs=NGPU):
        assert identical and spare_untouched


def _uneven_nccl_rank(transport: str, counts: list[int]):
    """TinyGPT(vocab=256, d=128) under DDP(transport).join() with counts[rank] steps of this
    rank's own batches; the params and whether the ranks agree."""
    rank, device = int(os.environ["RANK"]), _cuda_rank()
    torch.manual_seed(0)
    model = TinyGPT(vocab=256, d=128).to(device)
    ddp = DDP(model, transport=transport)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with ddp.join():
        for x, y in gpt_batches(counts[rank], 4, vocab=256, seed=50 + rank):
            ddp(x.to(device), y.to(device))[1].backward()
            opt.step()
            opt.zero_grad()
    identical = _identical_across_ranks(flat_params(model))
    dist.destroy_process_group()
    return flat_params(model).cpu(), identical


@pytest.mark.parametrize("transport", ["nccl", "peer"])
def test_uneven_inputs_under_join_match_one_process(launch, transport):
    if transport != "nccl" and NGPU < 2:
        pytest.skip("the copy-engine all-reduce needs 2 GPUs")
    counts = [3 + 2 * r for r in range(NGPU)]
    results = launch(_uneven_nccl_rank, args=(transport, counts), nprocs=NGPU)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    ref = TinyGPT(vocab=256, d=128).cuda()
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    data = [gpt_batches(counts[r], 4, vocab=256, seed=50 + r) for r in range(NGPU)]
    for t in range(max(counts)):
        for r in range(NGPU):
            if t < counts[r]:
                x, y = data[r][t]
                (ref(x.cuda(), y.cuda())[1] / NGPU).backward()
        opt.step()
        opt.zero_grad()
    want = flat_params(ref).cpu()
    for params, identical in results:
        assert identical
        assert float((params - want).norm() / want.norm()) < 1e-4


def _sharded_train_rank(shard: bool, precision: str):
    """train() on NCCL with the AdamW sharded or not (tiny buckets: several slices); the weights
    and whether the ranks agree."""
    device = _cuda_rank()
    torch.manual_seed(0)
    model = TinyGPT(vocab=256, d=128).to(device)
    cfg = TrainConfig(max_steps=8, grad_accum=2, lr=1e-2, precision=precision, log_every=0,
                      bucket_cap_mb=0.1, shard_optimizer=shard)
    train(model, gpt_batches(8, 8, vocab=256), cfg)
    params = flat_params(model)
    identical = _identical_across_ranks(params)
    dist.destroy_process_group()
    return params.cpu(), identical


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_sharded_adamw_on_nccl_matches_the_whole_one(launch, precision):
    if NGPU < 2:
        pytest.skip("sharding needs 2 GPUs")
    sharded = launch(_sharded_train_rank, args=(True, precision), nprocs=NGPU)
    whole = launch(_sharded_train_rank, args=(False, precision), nprocs=NGPU)
    for (s, same), (w, _) in zip(sharded, whole):
        assert same
        assert float((s - w).norm() / w.norm()) < (1e-5 if precision == "fp32" else 1e-3)
