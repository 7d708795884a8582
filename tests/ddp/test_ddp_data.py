"""How train() splits data across ranks (the stream runs without a process group)."""

from __future__ import annotations

import datetime

import pytest
import torch
import torch.distributed as dist

from nbdist import DDPValueError
from nbdist.ddp import TrainConfig, train
from nbdist.ddp._train import _BatchStream


def _ids(stream, n):
    return [stream.next()[0].tolist() for _ in range(n)]


def test_dataset_shards_are_disjoint_and_reshuffled_each_epoch_alike_on_all_ranks():
    data = torch.arange(24)
    ranks = [_BatchStream(data, "train_batches", r, 2, 3, seed=7, wrap=True) for r in range(2)]
    epoch0 = [_ids(s, 4) for s in ranks]  # 24 samples / 2 ranks / batch 3 = 4 batches an epoch
    flat = [i for shard in epoch0 for batch in shard for i in batch]
    assert sorted(flat) == list(range(24))
    epoch1 = [_ids(s, 4) for s in ranks]
    assert epoch1 != epoch0 and sorted(i for sh in epoch1 for b in sh for i in b) == list(range(24))
    # Seeking to a position gives the same batches as reading up to it.
    again = _BatchStream(data, "train_batches", 1, 2, 3, seed=7, wrap=True)
    again.seek(5)
    assert _ids(again, 3) == epoch1[1][1:]


def test_iterable_batches_are_strided_across_ranks_and_replayed_on_seek():
    batches = [(torch.tensor([i]),) for i in range(6)]
    r0 = _BatchStream(batches, "train_batches", 0, 2, None, seed=0, wrap=True)
    r1 = _BatchStream(batches, "train_batches", 1, 2, None, seed=0, wrap=True)
    assert [b[0] for b in _ids(r0, 4)] == [0, 2, 4, 0]
    assert [b[0] for b in _ids(r1, 3)] == [1, 3, 5]
    r1.seek(2)
    assert r1.next()[0].item() == 5


def test_eval_stream_ends_instead_of_wrapping():
    s = _BatchStream([(torch.tensor([1]),)], "eval_batches", 0, 1, None, seed=0, wrap=False)
    assert s.next() is not None and s.next() is None
    s.reset()
    assert s.next() is not None


def test_dataset_needs_batch_size():
    with pytest.raises(DDPValueError, match="set TrainConfig.batch_size"):
        _BatchStream(torch.utils.data.TensorDataset(torch.zeros(4)), "train_batches", 0, 1,
                     None, seed=0, wrap=True)


class _Mean(torch.nn.Module):
    """loss = mean(w * x); eval losses are exact, so the mean over ranks can be checked."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return (self.w * x).mean()


def _eval_rank(n: int):
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank()
    # n = 4 on 2 ranks: rank 0 gets 10, 30, rank 1 20, 40; n = 5: rank 0 also 50
    evals = [torch.full((2,), 10.0 * (i + 1)) for i in range(n)]
    cfg = TrainConfig(max_steps=1, lr=1e-9, precision="fp32", eval_every=1, eval_steps=3,
                      log_every=0, weight_decay=0.0)
    history = train(_Mean(), [torch.ones(2)] * 3, cfg, eval_batches=evals)
    return rank, history[-1]["eval_loss"]


# The last group of eval batches may be shorter than the ranks: the ranks it reaches evaluate
# their batch (before, the whole group was dropped, and 2 batches on 3 ranks gave no eval at all).
@pytest.mark.parametrize("n,ranks,mean", [(4, 2, 25.0), (5, 2, 30.0), (2, 3, 15.0)])
def test_eval_loss_is_the_mean_over_all_ranks(launch, n, ranks, mean):
    for _, value in launch(_eval_rank, args=(n,), nprocs=ranks):
        assert value == pytest.approx(mean, rel=1e-5)


class _Counted(torch.utils.data.Dataset):
    """Samples 0..n-1 that count how often they are loaded."""

    def __init__(self, n: int) -> None:
        self.n, self.loads = n, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        self.loads += 1
        return torch.tensor(i)


def _loader(data, rank, world=2, batch=2, batch_sampler=False, **kw):
    sampler = torch.utils.data.DistributedSampler(data, num_replicas=world, rank=rank, seed=5,
                                                  **kw)
    if batch_sampler:
        return torch.utils.data.DataLoader(
            data, batch_sampler=torch.utils.data.BatchSampler(sampler, batch, drop_last=False))
    return torch.utils.data.DataLoader(data, batch_size=batch, sampler=sampler)


def _loader_ids(stream, n):
    return [stream.next().tolist() for _ in range(n)]


@pytest.mark.parametrize("batch_sampler", [False, True])
def test_loader_with_distributed_sampler_shards_and_reshuffles_each_pass(batch_sampler):
    data = _Counted(16)  # 8 samples a rank, 4 batches of 2 a pass
    ranks = [_BatchStream(_loader(data, r, batch_sampler=batch_sampler), "train_batches", r, 2,
                          None, seed=0, wrap=True) for r in range(2)]
    passes = [[_loader_ids(s, 4) for s in ranks] for _ in range(3)]
    for p in passes:
        assert sorted(i for shard in p for b in shard for i in b) == list(range(16))
    assert passes[0] != passes[1] != passes[2]  # set_epoch each pass: a new shuffle


def test_loader_starts_from_epoch_zero_and_seeks_without_reading_earlier_passes():
    data = _Counted(16)
    loader = _loader(data, 1)
    loader.sampler.set_epoch(7)  # the caller's own set_epoch does not shift the run
    reading = _BatchStream(loader, "train_batches", 1, 2, None, seed=0, wrap=True)
    seen = _loader_ids(reading, 11)  # two passes of 4 batches and 3 of the third
    fresh = _BatchStream(_loader(data, 1), "train_batches", 1, 2, None, seed=0, wrap=True)
    assert _loader_ids(fresh, 11) == seen
    data.loads = 0
    fresh.seek(9)
    assert data.loads == 2  # only batch 8 (the third pass's first) was read to skip it
    assert _loader_ids(fresh, 2) == seen[9:11]


def test_loader_for_another_rank_is_an_error():
    loader = _loader(_Counted(8), rank=0)
    with pytest.raises(DDPValueError, match=r"train_batches: its DistributedSampler is for rank 0 "
                                            r"of 2, but this is rank 1 of 2"):
        _BatchStream(loader, "train_batches", 1, 2, None, seed=0, wrap=True)


def test_list_seek_skips_whole_passes():
    batches = [(torch.tensor([i]),) for i in range(6)]
    read = _BatchStream(batches, "train_batches", 1, 2, None, seed=0, wrap=True)
    seen = [b[0] for b in _ids(read, 8)]
    again = _BatchStream(batches, "train_batches", 1, 2, None, seed=0, wrap=True)
    again.seek(7)
    assert again.next()[0].item() == seen[7]


def test_shuffling_loader_without_sampler_is_shared_out_alike_on_every_rank():
    # DataLoader(shuffle=True) read whole by every rank, which keeps every world-th batch: the
    # ranks must shuffle alike, or their batches overlap and miss samples.
    data = _Counted(12)
    loader = torch.utils.data.DataLoader(data, batch_size=2, shuffle=True)
    torch.manual_seed(0)
    untouched = torch.rand(())
    torch.manual_seed(0)
    ranks = [_BatchStream(loader, "train_batches", r, 2, None, seed=4, wrap=True)
             for r in range(2)]
    passes = [[_loader_ids(s, 3) for s in ranks] for _ in range(2)]  # 6 batches a pass
    for p in passes:
        assert sorted(i for shard in p for b in shard for i in b) == list(range(12)), p
    assert passes[0] != passes[1]
    # Its order comes from the pass, not from the training generator, which it leaves alone.
    assert torch.equal(torch.rand(()), untouched)


class _Noisy(torch.utils.data.Dataset):
    """A random transform: sample i is i + noise drawn in the process that loads it."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i):
        return torch.tensor(float(i)) + torch.rand(())


@pytest.mark.parametrize("workers", [0, 2])
def test_random_transforms_repeat_when_resuming_halfway_through_a_pass(workers):
    def stream():
        sampler = torch.utils.data.DistributedSampler(_Noisy(), num_replicas=2, rank=1, seed=5)
        loader = torch.utils.data.DataLoader(_Noisy(), batch_size=1, sampler=sampler,
                                             num_workers=workers)
        return _BatchStream(loader, "train_batches", 1, 2, None, seed=0, wrap=True)

    torch.manual_seed(0)
    whole = stream()
    seen = [whole.next().tolist() for _ in range(5)]  # 4 a pass: into the second
    checkpoint = torch.get_rng_state()
    seen += [whole.next().tolist() for _ in range(2)]
    torch.manual_seed(1)
    resumed = stream()
    torch.set_rng_state(checkpoint)  # as train() restores it, before the seek
    resumed.seek(5)
    assert [resumed.next().tolist() for _ in range(2)] == seen[5:7]
