"""nbdist.ddp.train: resume after kill -9, crash-safe checkpoints, loss scaler, bad input."""

from __future__ import annotations

import datetime
import glob
import os

import pytest
import torch
import torch.distributed as dist
from _ddp_models import (
    TinyGPT,
    dropout_gpt_killing_at,
    flat_params,
    gpt_batches,
    gpt_overflowing_at,
)

import nbdist
from nbdist.ddp import TrainConfig, load_checkpoint, train

KILL_ENV = "NBDIST_DDP_TEST_KILL_IN_CHECKPOINT_WRITE"


def _config(ckpt_dir: str, max_steps: int, **kw) -> TrainConfig:
    base = dict(max_steps=max_steps, grad_accum=2, lr=1e-2, warmup_steps=2, precision="fp32",
                ckpt_dir=ckpt_dir, ckpt_every=2, log_every=0, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _run(ckpt_dir: str, max_steps: int, kill_rank: int = -1, kill_at_batch: int = -1,
         kill_in_write: int = 0):
    """One rank: train the tiny GPT (dropout on, so RNG state matters) and return its weights."""
    if kill_in_write:
        os.environ[KILL_ENV] = str(kill_in_write)  # die halfway through that write
    model, loss_fn = dropout_gpt_killing_at(kill_rank, kill_at_batch)
    history = train(model, gpt_batches(5, 4), _config(ckpt_dir, max_steps), loss_fn=loss_fn)
    return flat_params(model), [h["step"] for h in history]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, request):
    launch = request.getfixturevalue("launch")
    results = launch(_run, args=(str(tmp_path_factory.mktemp("ref")), 6), nprocs=2)
    assert torch.equal(results[0][0], results[1][0])
    assert results[0][1] == [1, 2, 3, 4, 5, 6]
    return results[0][0]


def test_resume_after_kill_matches_uninterrupted_run_bitwise(launch, tmp_path, uninterrupted):
    with pytest.raises(Exception):  # noqa: B017 - the launcher reports the dead rank
        # Rank 1 dies by SIGKILL in the middle of step 5 (its 9th micro-batch).
        launch(_run, args=(str(tmp_path), 6, 1, 9), nprocs=2)
    saved = load_checkpoint(str(tmp_path / "latest.pt"))
    assert int(saved["step"]) in (2, 4)
    results = launch(_run, args=(str(tmp_path), 6), nprocs=2)
    for params, steps in results:
        assert steps[0] == int(saved["step"]) + 1 and steps[-1] == 6  # it resumed
        assert torch.equal(params, uninterrupted)


def test_kill_during_checkpoint_write_keeps_previous_checkpoint(launch, tmp_path, uninterrupted):
    with pytest.raises(Exception):  # noqa: B017 - rank 0 dies by SIGKILL mid-write
        # The second checkpoint (after step 4) is where rank 0 dies.
        launch(_run, args=(str(tmp_path), 6, -1, -1, 2), nprocs=2)
    assert glob.glob(str(tmp_path / "latest.pt.tmp.*")), "the write should have died halfway"
    saved = load_checkpoint(str(tmp_path / "latest.pt"))
    assert int(saved["step"]) == 2
    results = launch(_run, args=(str(tmp_path), 6), nprocs=2)
    assert not glob.glob(str(tmp_path / "latest.pt.tmp.*"))
    for params, steps in results:
        assert steps == [3, 4, 5, 6] and torch.equal(params, uninterrupted)


def _run_killed_in_first_attempt(ckpt_dir: str, max_steps: int):
    """Rank 1 dies by SIGKILL in step 5 of the first attempt; the launcher's restart resumes."""
    first = os.environ["NBDIST_RESTART_COUNT"] == "0"
    return _run(ckpt_dir, max_steps, kill_rank=1 if first else -1, kill_at_batch=9)


# The whole fault-tolerant loop in one call: kill -9, the launcher restarts every rank (a fresh
# process group on a fresh port), train() resumes from the last checkpoint, same weights.
def test_launcher_restart_resumes_training_bitwise(launch, tmp_path, uninterrupted):
    results = launch(_run_killed_in_first_attempt, args=(str(tmp_path), 6), nprocs=2,
                     max_restarts=1)
    for params, steps in results:
        assert steps == [5, 6]  # the checkpoint after step 4, then the rest
        assert torch.equal(params, uninterrupted)


def _scaler_run(user_opt: bool):
    # Rank 1's step 3 (micro-batches 5, 6) overflows; the reduced gradient is inf everywhere.
    snapshots = []
    model, loss_fn = gpt_overflowing_at(1, 6, snapshots)
    cfg = TrainConfig(max_steps=8, grad_accum=2, lr=1e-2, precision="fp16", log_every=0,
                      init_scale=1024.0, growth_interval=3, grad_clip=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9) if user_opt else None
    history = train(model, gpt_batches(5, 4), cfg, loss_fn=loss_fn, optimizer=opt)
    return history, snapshots, flat_params(model)


@pytest.mark.parametrize("user_opt", [False, True], ids=["adamw", "user_sgd"])
def test_loss_scaler_skips_inf_steps_and_regrows(launch, user_opt):
    results = launch(_scaler_run, args=(user_opt,), nprocs=2)
    for history, snapshots, _ in results:
        assert [h["skipped"] for h in history] == [False, False, True] + [False] * 5
        # Scale used by each step: halved after the overflow, doubled after 3 good steps.
        assert [h["scale"] for h in history] == [1024, 1024, 1024, 512, 512, 512, 1024, 1024]
        # The skipped step left the weights alone: step 4 starts where step 3 started.
        assert torch.equal(snapshots[4], snapshots[6])
        assert not torch.equal(snapshots[2], snapshots[4])
    assert torch.equal(results[0][2], results[1][2])


def _fp16_resume_run(ckpt_dir: str, max_steps: int):
    """fp16 with overflows that depend on the data only (so a resumed run meets them again)."""
    rank = int(os.environ["RANK"])
    torch.manual_seed(0)
    model = TinyGPT()

    def loss_fn(m, batch):
        loss = m(*batch)[1]
        return loss * float("inf") if rank == 1 and int(batch[0].sum()) % 5 == 0 else loss

    cfg = _config(ckpt_dir, max_steps, precision="fp16", schedule="constant", warmup_steps=0,
                  init_scale=1024.0, growth_interval=2, ckpt_every=3)
    history = train(model, gpt_batches(5, 4), cfg, loss_fn=loss_fn)
    return flat_params(model), [(h["step"], h["scale"], h["skipped"]) for h in history]


def test_loss_scaler_state_survives_resume(launch, tmp_path):
    ref = launch(_fp16_resume_run, args=(str(tmp_path / "ref"), 8), nprocs=2)
    steps = ref[0][1]
    skipped = [s for _, _, s in steps]
    assert any(skipped) and not all(skipped), steps  # the run has overflows and growth
    assert len({scale for _, scale, _ in steps}) > 1, steps
    # Cut after step 3, one good step into a growth interval of 2 (step 4 regrows the scale).
    first = launch(_fp16_resume_run, args=(str(tmp_path / "cut"), 3), nprocs=2)
    rest = launch(_fp16_resume_run, args=(str(tmp_path / "cut"), 8), nprocs=2)
    for r in range(2):
        # The scale and the count of good steps went into the checkpoint and came back.
        assert first[r][1] + rest[r][1] == steps
        assert torch.equal(rest[r][0], ref[r][0])


def _precision_run(precision: str):
    import contextlib
    import io

    torch.manual_seed(0)
    model = TinyGPT()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        train(model, gpt_batches(3, 4), TrainConfig(max_steps=3, precision=precision, log_every=1))
    return flat_params(model), out.getvalue()


def test_auto_precision_is_fp32_on_cpu(launch):
    auto = launch(_precision_run, args=("auto",), nprocs=2)
    fp32 = launch(_precision_run, args=("fp32",), nprocs=2)
    assert torch.equal(auto[0][0], fp32[0][0])
    assert auto[0][1].splitlines()[0] == "precision='auto': fp32 on cpu"
    assert "precision=" not in fp32[0][1]


def _bad_run(kind: str):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    torch.manual_seed(0)
    model = TinyGPT()
    data = gpt_batches(3, 4)
    cfg = TrainConfig(max_steps=3, precision="fp32", log_every=0)
    loss_fn = None
    if kind == "nan":
        def loss_fn(m, batch):
            return m(*batch)[1] * float("nan")
    elif kind == "detached":  # rebuilt from a number: no gradient reaches the model
        def loss_fn(m, batch):
            return torch.tensor(m(*batch)[1].item(), requires_grad=True)
    elif kind == "empty":
        data = []
    elif kind == "empty_dataset":
        data, cfg.batch_size = (torch.zeros(1, 16, dtype=torch.long),) * 2, 1
    before = flat_params(model)
    try:
        train(model, data, cfg, loss_fn=loss_fn)
    except (nbdist.DDPError, RuntimeError) as e:  # RuntimeError: raised inside backward/step
        # The weights the error leaves: the last finite ones (here the initial ones).
        return type(e).__name__, str(e), torch.equal(flat_params(model), before)
    return "no error", "", False


@pytest.mark.parametrize(
    ("kind", "expect"),
    [("nan", "non-finite gradient at step 1"), ("empty", "train_batches is empty"),
     ("empty_dataset", "too few for 2 ranks"),
     ("detached", "loss of step 1 does not depend on any of the model's parameters")],
)
def test_bad_input_is_a_clear_error_on_every_rank(launch, kind, expect):
    for name, message, untouched in launch(_bad_run, args=(kind,), nprocs=2):
        assert expect in message, (name, message)
        assert untouched, "the failed step changed the weights"


def test_bad_config_names_the_field():
    with pytest.raises(nbdist.DDPValueError, match=r"TrainConfig.precision='fp8'"):
        train(torch.nn.Linear(2, 2), [torch.zeros(2)], TrainConfig(max_steps=1, precision="fp8"))
    with pytest.raises(nbdist.DDPValueError, match=r"TrainConfig.ckpt_every=5: needs ckpt_dir"):
        train(torch.nn.Linear(2, 2), [torch.zeros(2)], TrainConfig(max_steps=1, ckpt_every=5))
    with pytest.raises(nbdist.DDPValueError, match=r"TrainConfig.transport='gpu': must be one of"):
        train(torch.nn.Linear(2, 2), [torch.zeros(2)], TrainConfig(max_steps=1, transport="gpu"))


def test_unreadable_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "latest.pt"
    path.write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(nbdist.DDPValueError, match=r"latest.pt' is not readable"):
        load_checkpoint(str(path))
    assert load_checkpoint(str(tmp_path / "missing.pt")) is None


def _small_run(ckpt_dir: str, **size):
    """One process, 2 steps of TinyGPT(**size) with a checkpoint; returns the model."""
    torch.manual_seed(0)
    model = TinyGPT(**size)
    train(model, gpt_batches(2, 4), _config(ckpt_dir, 2, grad_accum=1))
    return model


# A checkpoint that does not fit the model is refused before anything is copied: the model is
# left as it was. Parameters are stored by position, so a model with fewer of them (one layer
# instead of two, the same shapes in front) must be refused too, not fed another model's prefix.
@pytest.mark.parametrize(("size", "expect"), [
    (dict(layers=1), "holds 26 parameters and 0 buffers but the model has 15 and 0"),
    (dict(block=8), "'param.1' has shape [16, 32] but the model's is [8, 32]")],
    ids=["fewer_layers", "other_shape"])
def test_checkpoint_of_another_model_is_refused_untouched(tmp_path, size, expect):
    _small_run(str(tmp_path))
    torch.manual_seed(1)
    model = TinyGPT(**size)
    before = flat_params(model)
    with pytest.raises(nbdist.DDPValueError) as err:
        train(model, gpt_batches(2, 4), _config(str(tmp_path), 4, grad_accum=1))
    assert expect in str(err.value)
    assert torch.equal(flat_params(model), before)


def _elastic_run(ckpt_dir: str, max_steps: int):
    torch.manual_seed(0)
    data = torch.randint(0, 32, (64, 17))  # a tensor dataset: 64 samples, sharded over ranks
    model = TinyGPT()
    cfg = _config(ckpt_dir, max_steps, grad_accum=1, batch_size=4, log_every=1)

    def loss_fn(m, batch):
        (seq,) = batch
        return m(seq[:, :-1], seq[:, 1:])[1]

    history = train(model, data, cfg, loss_fn=loss_fn)
    return flat_params(model), [h["step"] for h in history]


def test_resume_on_another_number_of_ranks(launch, tmp_path):
    ckpt = str(tmp_path)
    first = launch(_elastic_run, args=(ckpt, 4), nprocs=2)
    saved = load_checkpoint(ckpt + "/latest.pt")
    assert int(saved["world_size"]) == 2 and int(saved["data_position"]) == 4
    # 2 ranks -> 1: the run goes on from step 5 with rank 0's weights and the same 8
    # micro-batches counted as consumed over all ranks.
    ((params, steps),) = launch(_elastic_run, args=(ckpt, 6), nprocs=1)
    assert steps == [5, 6]
    saved = load_checkpoint(ckpt + "/latest.pt")
    assert int(saved["world_size"]) == 1 and int(saved["data_position"]) == 8 + 2
    assert not torch.equal(params, first[0][0])  # it trained on
    # 1 rank -> 2: 10 micro-batches become 5 per rank.
    results = launch(_elastic_run, args=(ckpt, 8), nprocs=2)
    assert all(steps == [7, 8] for _, steps in results)
    assert torch.equal(results[0][0], results[1][0])
    saved = load_checkpoint(ckpt + "/latest.pt")
    assert int(saved["world_size"]) == 2 and int(saved["data_position"]) == 5 + 2
    # 2 ranks -> 3: 14 micro-batches over all ranks become 4 per rank (rounded down).
    results = launch(_elastic_run, args=(ckpt, 10), nprocs=3)
    assert all(steps == [9, 10] for _, steps in results)
    assert all(torch.equal(results[0][0], params) for params, _ in results)
    saved = load_checkpoint(ckpt + "/latest.pt")
    assert int(saved["world_size"]) == 3 and int(saved["data_position"]) == 4 + 2


def _loader_run(ckpt_dir: str, max_steps: int):
    """A DataLoader with a DistributedSampler and worker processes (forked by the rank): 20
    sequences, 10 a rank, 5 batches of 2 a pass."""
    model, loss_fn = dropout_gpt_killing_at(-1, -1)
    data = torch.utils.data.TensorDataset(*(torch.cat(t) for t in zip(*gpt_batches(5, 4))))
    sampler = torch.utils.data.DistributedSampler(data, shuffle=True, seed=1)
    loader = torch.utils.data.DataLoader(data, batch_size=2, sampler=sampler, num_workers=2)
    # A constant rate: a run cut by a shorter max_steps has the same schedule as the whole one.
    cfg = _config(ckpt_dir, max_steps, schedule="constant", warmup_steps=0)
    history = train(model, loader, cfg, loss_fn=loss_fn)
    return flat_params(model), [h["step"] for h in history]


# Resumed inside the second pass over the loader (step 4: 8 batches of 5 a pass) and right at
# the end of it (step 5: 10): the same weights as without the cut, so the sampler's epoch, the
# place in it and the random stream (a DataLoader draws from it when a pass starts; dropout
# reads it) all came back.
@pytest.mark.parametrize("cut", [4, 5])
def test_dataloader_with_workers_resumes_bitwise(launch, tmp_path, cut):
    ref = launch(_loader_run, args=(str(tmp_path / "ref"), 7), nprocs=2)
    assert torch.equal(ref[0][0], ref[1][0])
    launch(_loader_run, args=(str(tmp_path / "cut"), cut), nprocs=2)
    assert int(load_checkpoint(str(tmp_path / "cut" / "latest.pt"))["data_position"]) == 2 * cut
    rest = launch(_loader_run, args=(str(tmp_path / "cut"), 7), nprocs=2)
    for (params, steps), (want, _) in zip(rest, ref):
        assert steps == list(range(cut + 1, 8))
        assert torch.equal(params, want)


# A loss may be negative (here shifted by -1000, which leaves its gradient alone): the eval of
# such a loss is reported, not taken for "no eval ran" (-1 used to mean that).
def test_negative_eval_loss_is_reported():
    torch.manual_seed(0)
    cfg = TrainConfig(max_steps=2, lr=1e-3, precision="fp32", log_every=0, eval_every=1,
                      eval_steps=1)
    history = train(TinyGPT(), gpt_batches(2, 4), cfg, eval_batches=gpt_batches(1, 4),
                    loss_fn=lambda m, batch: m(*batch)[1] - 1000.0)
    assert [h["eval_loss"] is not None and h["eval_loss"] < -900 for h in history] == [True, True]


def _fail_and_leave_a_cycle(ckpt_dir: str) -> None:
    try:
        train(TinyGPT(layers=1), gpt_batches(2, 4), _config(ckpt_dir, 4, grad_accum=1))
    except nbdist.DDPValueError as e:
        cycle = [e]
        cycle.append(cycle)  # garbage that only the collector frees (as pytest's reports do)


# A failed train() in this process (a notebook kernel), then a fork that collects garbage (a
# DataLoader worker, any os.fork): the child must not be the one to destroy train()'s process
# group, whose threads do not exist there (its destructor hung). train() lets it go at once.
def test_a_failed_train_leaves_no_process_group_for_a_forked_child(tmp_path):
    import gc
    import time

    _small_run(str(tmp_path))
    _fail_and_leave_a_cycle(str(tmp_path))
    pid = os.fork()
    if pid == 0:
        gc.collect()
        os._exit(0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung collecting train()'s leftovers")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
