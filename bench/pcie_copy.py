"""Host <-> device copy bandwidth through pinned memory: the floor under the copy-engine
all-reduce's host path (DDP with P2P off). Each GPU alone and all GPUs at once, each direction
alone and both directions at once, one copy stream per direction and GPU, like the reducer's.

    python bench/pcie_copy.py --mb 154 --out results.json
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


def _run(gpus: list[int], directions: list[str], nbytes: int, repeats: int) -> float:
    """GB/s per GPU and direction (mean of `repeats` timed rounds after one warm-up)."""
    work = []
    for g in gpus:
        dev = torch.empty(nbytes, dtype=torch.uint8, device=f"cuda:{g}")
        host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        for d in directions:
            work.append((g, d, dev, host, torch.cuda.Stream(device=g)))
    best = []
    for i in range(repeats + 1):
        for g in gpus:
            torch.cuda.synchronize(g)
        starts, ends = [], []
        for g, d, dev, host, stream in work:
            with torch.cuda.device(g), torch.cuda.stream(stream):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record(stream)
                if d == "d2h":
                    host.copy_(dev, non_blocking=True)
                else:
                    dev.copy_(host, non_blocking=True)
                e.record(stream)
                starts.append(s)
                ends.append(e)
        for g in gpus:
            torch.cuda.synchronize(g)
        if i:
            best.append(sum(s.elapsed_time(e) for s, e in zip(starts, ends)) / len(starts))
    ms = sum(best) / len(best)
    return nbytes / ms / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mb", type=float, default=154, help="bytes per copy, MB (GPT-2's wte: 154)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out")
    a = ap.parse_args()
    n = torch.cuda.device_count()
    nbytes = int(a.mb * 1e6)
    rows = []
    for gpus in ([0], list(range(n))) if n > 1 else ([0],):
        for directions in (["d2h"], ["h2d"], ["d2h", "h2d"]):
            gbs = _run(gpus, directions, nbytes, a.repeats)
            rows.append(dict(gpus=len(gpus), directions="+".join(directions), gb_per_s=gbs))
            print(f"{len(gpus)} GPU(s) {'+'.join(directions):<8} {gbs:6.1f} GB/s per copy stream")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(dict(benchmark="pcie_copy", mb=a.mb, device=torch.cuda.get_device_name(0),
                           rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
