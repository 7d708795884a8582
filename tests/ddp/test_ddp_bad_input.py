"""nbdist.ddp.train on bad input: a clear DDPValueError naming what was wrong and where, never a
pybind cast error, a bare StopIteration, or an eval that silently never runs; one-shot iterators
of train batches resume without losing data."""

from __future__ import annotations

import datetime
import math
import pathlib

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from nbdist import DDPValueError
from nbdist.ddp import TrainConfig, load_checkpoint, train
from nbdist.ddp._train import _BatchStream

# Single-process runs (a world of one, set up by train() itself) where ranks do not matter.


@pytest.fixture(autouse=True)
def _no_process_group_left():
    """train() in this process makes a world-of-one group; ranks that nbdist.launch forks later
    (here or in other test modules) would inherit it, so it goes when each test ends."""
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def _lin() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(2, 1)


def _data(n: int = 4, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 2, generator=g), torch.randn(4, 1, generator=g)) for _ in range(n)]


def _mse(m, b):
    return F.mse_loss(m(b[0]), b[1])


def _cfg(**kw) -> TrainConfig:
    base = dict(max_steps=2, lr=1e-2, precision="fp32", log_every=0)
    base.update(kw)
    return TrainConfig(**base)


# 1. what loss_fn (or the forward) returns, in training and in eval


def _returns(value, phase: str):
    """A loss_fn that returns ``value(loss)`` in ``phase`` ("train"/"eval") and the loss else."""
    def loss_fn(m, b):
        loss = _mse(m, b)
        return value(loss) if (phase == "train") == m.training else loss
    return loss_fn


@pytest.mark.parametrize(
    ("phase", "value", "expect"),
    [
        ("train", lambda loss: None, r"loss_fn\(model, batch\) returned None in training"),
        ("train", lambda loss: loss.item(), r"returned a float \(.*\) in training: the loss must "
                                            r"be a tensor with one element \(a Python number"),
        ("train", lambda loss: 1, r"returned a int \(1\) in training"),
        ("train", lambda loss: torch.tensor(loss.item()),
         r"returned a loss without a gradient \(requires_grad=False"),
        ("eval", lambda loss: None, r"returned None in eval"),
        ("eval", lambda loss: loss.item(), r"returned a float \(.*\) in eval"),
        ("eval", lambda loss: loss.repeat(3),
         r"returned a tensor of shape \[3\] in eval: the loss must be a tensor with one element"),
    ],
    ids=["train_none", "train_float", "train_int", "train_no_grad", "eval_none", "eval_float",
         "eval_vector"],
)
def test_a_loss_that_is_not_a_one_element_tensor_is_named(phase, value, expect):
    cfg = _cfg(eval_every=1, eval_steps=2)
    with pytest.raises(DDPValueError, match=expect):
        train(_lin(), _data(), cfg, eval_batches=_data(2, seed=1),
              loss_fn=_returns(value, phase))


def test_a_forward_whose_loss_entry_is_not_scalar_is_named_in_eval():
    class DictOut(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def forward(self, x, y):
            err = (self.lin(x) - y) ** 2
            return {"loss": err.mean() if self.training else err}

    with pytest.raises(DDPValueError, match=r"the model's forward returned a tensor of shape "
                                            r"\[4, 1\] in eval"):
        train(DictOut(), _data(), _cfg(eval_every=1, eval_steps=1), eval_batches=_data(1))


def test_model_and_loss_fn_of_the_wrong_kind_are_named():
    with pytest.raises(DDPValueError, match=r"train\(model=...\): the model \(NoParams\) has no "
                                            r"parameters"):
        class NoParams(torch.nn.Module):
            def forward(self, x):
                return x.sum()

        train(NoParams(), [torch.randn(4, 2)], _cfg())
    with pytest.raises(DDPValueError, match=r"train\(model=...\) must be a torch.nn.Module, "
                                            r"got function"):
        train(lambda x: x, _data(), _cfg())
    with pytest.raises(DDPValueError, match=r"train\(loss_fn=...\) must be a function"):
        train(_lin(), _data(), _cfg(), loss_fn="mse")


# 3. eval that would silently never run, or read other batches each time


def test_eval_every_without_eval_steps_is_an_error():
    # The docstring says eval_steps is the number of batches per eval; 0 would mean no eval.
    with pytest.raises(DDPValueError, match=r"TrainConfig.eval_steps=0: must be >= 1 when "
                                            r"eval_every is set \(1\)"):
        train(_lin(), _data(), _cfg(eval_every=1), eval_batches=_data(2), loss_fn=_mse)


def test_eval_batches_without_eval_every_are_an_error():
    with pytest.raises(DDPValueError, match=r"eval_batches were given but TrainConfig.eval_every "
                                            r"is 0, so no eval would run"):
        train(_lin(), _data(), _cfg(eval_steps=2), eval_batches=_data(2), loss_fn=_mse)


def test_empty_eval_batches_are_an_error():
    with pytest.raises(DDPValueError, match=r"eval_batches is empty \(list with no batches\)"):
        train(_lin(), _data(), _cfg(eval_every=1, eval_steps=1), eval_batches=[], loss_fn=_mse)


def test_one_shot_eval_batches_are_an_error():
    with pytest.raises(DDPValueError, match=r"eval_batches is a one-shot iterator \(generator\)"
                                            r".*must be re-iterable"):
        train(_lin(), _data(), _cfg(eval_every=1, eval_steps=1),
              eval_batches=(b for b in _data(4)), loss_fn=_mse)
    # A list evaluates on the same batches each time.
    history = train(_lin(), _data(), _cfg(eval_every=1, eval_steps=1, lr=1e-9),
                    eval_batches=_data(4, seed=1), loss_fn=_mse)
    assert all(h["eval_loss"] is not None for h in history)


# 4. one-shot iterators of train batches


def test_one_shot_stream_keeps_the_peeked_batch_when_seeking():
    batches = [(torch.tensor([i]),) for i in range(8)]
    for world, rank in ((1, 0), (2, 1)):
        s = _BatchStream(iter(batches), "train_batches", rank, world, None, seed=0, wrap=True)
        assert s.first()[0].item() == rank  # train() looks at it before a resume seeks
        s.seek(2)
        assert [s.next()[0].item() for _ in range(2)] == [2 * world + rank, 3 * world + rank]
        s = _BatchStream(iter(batches), "train_batches", rank, world, None, seed=0, wrap=True)
        s.first()
        s.seek(0)  # nothing to skip: the peeked batch is the next one
        assert s.next()[0].item() == rank


def _ids() -> dict:
    return {round(float(b[0].sum()), 4): i for i, b in enumerate(_data(16))}


def _one_shot_run(ckpt_dir: str, max_steps: int):
    """One rank: train on a generator of batches; returns the ids of the batches it saw."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    ids, seen = _ids(), []

    def loss_fn(m, b):
        seen.append(ids[round(float(b[0].sum()), 4)])
        return _mse(m, b)

    model = _lin()
    cfg = _cfg(max_steps=max_steps, ckpt_dir=ckpt_dir, ckpt_every=2, schedule="constant")
    history = train(model, (b for b in _data(16)), cfg, loss_fn=loss_fn)
    return [h["step"] for h in history], seen, torch.cat([p.detach().flatten()
                                                          for p in model.parameters()])


def test_resume_from_a_one_shot_iterator_loses_no_batch(launch, tmp_path):
    ref = launch(_one_shot_run, args=(str(tmp_path / "ref"), 4), nprocs=2)
    launch(_one_shot_run, args=(str(tmp_path / "cut"), 2), nprocs=2)
    rest = launch(_one_shot_run, args=(str(tmp_path / "cut"), 4), nprocs=2)
    for rank in range(2):
        steps, seen, params = rest[rank]
        assert steps == [3, 4]
        # Rank r takes every other batch: the resumed run goes on with batches 4 + r and 6 + r.
        assert ref[rank][1] == [rank, 2 + rank, 4 + rank, 6 + rank]
        assert seen == ref[rank][1][2:]
        assert torch.equal(params, ref[rank][2])


def test_a_one_shot_iterator_that_runs_out_says_so():
    with pytest.raises(DDPValueError, match=r"train_batches ran out after 2 batches and cannot "
                                            r"be restarted: it is a one-shot iterator "
                                            r"\(generator\).*pass a list"):
        train(_lin(), (b for b in _data(2)), _cfg(max_steps=5), loss_fn=_mse)
    # A list is read again from its start.
    assert len(train(_lin(), _data(2), _cfg(max_steps=5), loss_fn=_mse)) == 5


# 5. TrainConfig fields: type and range, naming the field and the value


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_steps", True), ("grad_accum", True), ("warmup_steps", False), ("lr", True),
        ("min_lr", "x"), ("weight_decay", None), ("weight_decay", math.nan),
        ("weight_decay", -0.1), ("betas", 0.9), ("betas", ("0.9", 0.95)),
        ("eps", None), ("eps", -1e-8), ("eps", 0.0), ("grad_clip", math.nan),
        ("grad_clip", "1"), ("init_scale", 0.0), ("init_scale", math.inf), ("init_scale", None),
        ("peak_flops", "x"), ("peak_flops", 0.0), ("bucket_cap_mb", math.inf),
        ("bucket_cap_mb", "25"), ("seed", None), ("seed", 1.5), ("seed", 2**64),
        ("resume", "no"), ("find_unused_parameters", 1), ("embedding_rows", None),
        ("batch_size", 2.0), ("batch_size", "2"), ("batch_size", True), ("ckpt_dir", 3),
        ("ckpt_dir", b"ckpt"),
    ],
)
def test_bad_config_field_names_the_field_and_the_value(field, value):
    cfg = _cfg(**{field: value})
    with pytest.raises(DDPValueError, match=rf"^TrainConfig\.{field}=.*: must be"):
        train(_lin(), _data(), cfg, loss_fn=_mse)
    assert f"={value!r}:" in str(pytest.raises(DDPValueError, cfg.validate).value)


def _numpy_and_path_run(ckpt_dir: str):
    import numpy as np

    cfg = _cfg(max_steps=np.int64(2), grad_accum=np.int32(1), lr=np.float32(1e-2),
               betas=(np.float64(0.9), 0.95), seed=np.int64(3), batch_size=np.int64(2),
               grad_clip=math.inf, ckpt_dir=pathlib.Path(ckpt_dir), ckpt_every=1)
    data = (torch.randn(8, 2), torch.randn(8, 1))  # a tensor dataset: batch_size is used
    steps = [h["step"] for h in train(_lin(), data, cfg, loss_fn=_mse)]
    return steps, int(load_checkpoint(pathlib.Path(ckpt_dir) / "latest.pt")["step"])


def test_numpy_numbers_and_paths_are_accepted(launch, tmp_path):
    pytest.importorskip("numpy")
    # In a rank of its own: the C++ checkpoint writer counts its writes per process (for the
    # crash tests' fault injection), and ranks forked later would inherit this process's count.
    assert launch(_numpy_and_path_run, args=(str(tmp_path),), nprocs=1) == [([1, 2], 2)]


# 6. a dict is not a list of batches


def test_a_dict_of_tensors_as_batches_says_what_is_accepted():
    data = {"x": torch.randn(8, 2), "y": torch.randn(8, 1)}
    with pytest.raises(DDPValueError, match=r"train_batches is a dict with keys \['x', 'y'\]: "
                                            r"pass an iterable of batches"):
        train(_lin(), data, _cfg(batch_size=2), loss_fn=_mse)
    with pytest.raises(DDPValueError, match=r"eval_batches is a dict"):
        train(_lin(), _data(), _cfg(eval_every=1, eval_steps=1), eval_batches=data, loss_fn=_mse)
