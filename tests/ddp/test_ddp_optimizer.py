"""nbdist.ddp.train with a user torch.optim optimizer: equivalence with a hand-written loop,
kill -9 and resume, bad input."""

from __future__ import annotations

import datetime
import math

import pytest
import torch
import torch.distributed as dist
from _ddp_models import TinyGPT, dropout_gpt_killing_at, flat_params, gpt_batches

import nbdist
from nbdist.ddp import TrainConfig, load_checkpoint, train

STEPS = 6
ACCUM = 2
MICRO = 2  # sequences per micro-batch; a step sees ACCUM * world micro-batches


def _config(**kw) -> TrainConfig:
    # cfg.lr differs from the groups' own lrs: the schedule is a factor on each group's lr.
    base = dict(max_steps=STEPS, grad_accum=ACCUM, lr=0.1, min_lr=0.02, warmup_steps=2,
                schedule="cosine", grad_clip=0.5, precision="fp32", log_every=0, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _sgd(model: torch.nn.Module) -> torch.optim.SGD:
    """Two groups with their own lr and decay, momentum on: state that must survive resume."""
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.SGD([{"params": matrices, "lr": 0.05, "weight_decay": 1e-3},
                            {"params": others, "lr": 0.02}], momentum=0.9)


def _lr_at(cfg: TrainConfig, step: int) -> float:
    """The schedule as documented: warm-up, then cosine from lr to min_lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def _train_ranks():
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    world = dist.get_world_size()
    torch.manual_seed(0)
    model = TinyGPT()
    opt = _sgd(model)
    batches = gpt_batches(STEPS * ACCUM * world, MICRO)
    history = train(model, batches, _config(), loss_fn=lambda m, b: m(*b)[1], optimizer=opt)
    return flat_params(model), history, [g["lr"] for g in opt.param_groups]


def _train_reference(world: int):
    """The same SGD by hand, one process, each step's micro-batches as one full batch."""
    cfg = _config()
    torch.manual_seed(0)
    model = TinyGPT()
    opt = _sgd(model)
    initial = [g["lr"] for g in opt.param_groups]
    batches = gpt_batches(STEPS * ACCUM * world, MICRO)
    per_step = ACCUM * world
    norms = []
    for step in range(STEPS):
        chunk = batches[step * per_step:(step + 1) * per_step]
        x = torch.cat([b[0] for b in chunk])
        y = torch.cat([b[1] for b in chunk])
        model(x, y)[1].backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)))
        for g, lr0 in zip(opt.param_groups, initial):
            g["lr"] = lr0 * (_lr_at(cfg, step) / cfg.lr)
        opt.step()
        opt.zero_grad()
    return flat_params(model), norms, [g["lr"] for g in opt.param_groups]


def test_user_sgd_on_two_ranks_matches_a_hand_written_loop(launch):
    results = launch(_train_ranks, args=(), nprocs=2)
    ref, ref_norms, ref_lrs = _train_reference(2)
    cfg = _config()
    for params, history, lrs in results:
        assert float((params - ref).norm() / ref.norm()) <= 1e-5
        assert [h["lr"] for h in history] == pytest.approx([_lr_at(cfg, s) for s in range(STEPS)])
        assert lrs == pytest.approx(ref_lrs) and lrs[0] != lrs[1]
        got_norms = [h["grad_norm"] for h in history]
        assert got_norms == pytest.approx(ref_norms, rel=1e-4)
        assert max(got_norms) > cfg.grad_clip  # clipping really took part
    assert torch.equal(results[0][0], results[1][0])


KILL_ENV = "NBDIST_DDP_TEST_KILL_IN_CHECKPOINT_WRITE"


def _run(ckpt_dir: str, kill_rank: int = -1, kill_at_batch: int = -1, builtin: bool = False):
    """One rank: the tiny GPT with dropout (RNG state matters) and a momentum SGD."""
    model, loss_fn = dropout_gpt_killing_at(kill_rank, kill_at_batch)
    cfg = _config(ckpt_dir=ckpt_dir, ckpt_every=2)
    try:
        history = train(model, gpt_batches(5, 4), cfg, loss_fn=loss_fn,
                        optimizer=None if builtin else _sgd(model))
    except nbdist.DDPValueError as e:
        return str(e)
    return flat_params(model), [h["step"] for h in history]


def test_resume_after_kill_with_user_optimizer_matches_uninterrupted_run(launch, tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    uninterrupted = launch(_run, args=(str(ref_dir),), nprocs=2)
    assert uninterrupted[0][1] == list(range(1, STEPS + 1))
    saved = load_checkpoint(str(ref_dir / "latest.pt"))
    assert saved["optimizer.state_dict"].dtype == torch.uint8
    assert not any(k.startswith("adamw.") for k in saved)

    with pytest.raises(Exception):  # noqa: B017 - the launcher reports the dead rank
        # Rank 1 dies by SIGKILL in the middle of step 5 (its 9th micro-batch).
        launch(_run, args=(str(run_dir), 1, 9), nprocs=2)
    assert int(load_checkpoint(str(run_dir / "latest.pt"))["step"]) in (2, 4)
    resumed = launch(_run, args=(str(run_dir),), nprocs=2)
    for params, steps in resumed:
        assert steps[0] in (3, 5) and steps[-1] == STEPS
        assert torch.equal(params, uninterrupted[0][0])

    # The built-in AdamW cannot continue a user optimizer's checkpoint.
    for message in launch(_run, args=(str(run_dir), -1, -1, True), nprocs=2):
        assert isinstance(message, str) and "written with a user optimizer" in message


def test_bad_optimizer_is_a_clear_error():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    cfg = TrainConfig(max_steps=1, precision="fp32")
    with pytest.raises(nbdist.DDPValueError, match="must be a torch.optim.Optimizer.*got list"):
        train(model, [torch.zeros(2)], cfg, optimizer=[torch.zeros(1)])
    other = torch.nn.Linear(2, 3)
    with pytest.raises(nbdist.DDPValueError,
                       match=r"param_groups\[0\]\['params'\]\[0\] \(shape \[3, 2\]\) is not a "
                             r"parameter of the model"):
        train(model, [torch.zeros(2)], cfg, optimizer=torch.optim.SGD(other.parameters(), lr=1))
    with pytest.raises(nbdist.DDPValueError, match=r"does not hold .*: 1.weight, 1.bias"):
        train(model, [torch.zeros(2)], cfg,
              optimizer=torch.optim.SGD(model[0].parameters(), lr=1))
    assert not dist.is_initialized()  # refused before any process group was made
