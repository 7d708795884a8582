"""Tiny models for the ddp tests (importable by spawned ranks)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        # No qkv bias: the key bias has an exactly-zero gradient (softmax shift invariance) whose
        # rounding noise AdamW would blow up to full-size updates, hiding real differences.
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)
        self.heads = heads
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.drop(self.proj(y))
        return x + self.drop(self.out(F.gelu(self.fc(self.ln2(x)))))


class TinyGPT(nn.Module):
    """GPT with tied input/output embeddings; forward(idx, targets) -> (logits, loss)."""

    def __init__(self, vocab: int = 32, d: int = 32, layers: int = 2, heads: int = 2,
                 block: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(block, d)
        self.blocks = nn.ModuleList(Block(d, heads, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        self.drop = nn.Dropout(dropout)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        t = idx.shape[1]
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(t, device=idx.device)))
        for blk in self.blocks:
            x = blk(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss


class TinyCNN(nn.Module):
    """Conv + BatchNorm classifier; forward(x) -> logits."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        # No conv bias before BatchNorm: its gradient is exactly zero (BN removes the mean).
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean((2, 3)))


def gpt_batches(steps: int, batch: int, block: int = 16, vocab: int = 32, seed: int = 123):
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, vocab, (steps, batch, block + 1), generator=g)
    return [(d[:, :-1].contiguous(), d[:, 1:].contiguous()) for d in data]


def cnn_batches(steps: int, batch: int, seed: int = 123):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, 8, 8, generator=g), torch.randint(0, 4, (batch,), generator=g))
            for _ in range(steps)]


# "gpt_wide": a vocabulary larger than 2 ranks' lookups, so that DDP exchanges the embedding's
# looked-up rows; with "gpt"'s 32 rows it all-reduces the lookups' gradient densely instead.
WIDE_VOCAB = 512


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if name == "gpt_wide":
        return TinyGPT(vocab=WIDE_VOCAB)
    return TinyGPT() if name == "gpt" else TinyCNN()


def batches_for(name: str, steps: int, batch: int):
    if name == "gpt_wide":
        return gpt_batches(steps, batch, vocab=WIDE_VOCAB)
    return gpt_batches(steps, batch) if name == "gpt" else cnn_batches(steps, batch)


def loss_of(name: str, model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    if name.startswith("gpt"):
        return model(x, y)[1]
    return F.cross_entropy(model(x), y)


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def dropout_gpt_killing_at(kill_rank: int, kill_at_batch: int):
    """A rank's set-up for the resume tests: gloo up, the tiny GPT with dropout (so RNG state
    matters) from seed 0, and a train() loss_fn that SIGKILLs this process at its
    ``kill_at_batch``-th batch when it is rank ``kill_rank``. Returns (model, loss_fn)."""
    import datetime
    import os
    import signal

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = TinyGPT(dropout=0.1)
    seen = [0]

    def loss_fn(m, batch):
        seen[0] += 1
        if rank == kill_rank and seen[0] == kill_at_batch:
            os.kill(os.getpid(), signal.SIGKILL)
        return m(*batch)[1]

    return model, loss_fn


def gpt_overflowing_at(overflow_rank: int, at_call: int, snapshots: list | None = None):
    """A rank's set-up for the fp16 loss-scaler tests: gloo up, the tiny GPT from seed 0, and a
    train() loss_fn whose ``at_call``-th loss on rank ``overflow_rank`` is inf (the reduced
    gradient is then inf everywhere); ``snapshots`` gets the weights each call sees. Returns
    (model, loss_fn)."""
    import datetime

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = TinyGPT()
    seen = [0]

    def loss_fn(m, batch):
        seen[0] += 1
        if snapshots is not None:
            snapshots.append(flat_params(m).clone())
        loss = m(*batch)[1]
        return loss * float("inf") if rank == overflow_rank and seen[0] == at_call else loss

    return model, loss_fn
