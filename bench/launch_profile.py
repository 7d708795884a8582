"""Where a fork launch spends its time in the parent, from a process that imported torch.

Times the preflight pieces one by one (first and second call: NVML is initialised once per
process), then profiles repeated fork launches of a function that only stamps its entry, and
prints the call-to-entry times and the top of the profile. A diagnostic, not a comparison: the
comparison with torch.multiprocessing is bench/launch_latency.py.

    python bench/launch_profile.py --ranks 2 --out /tmp/launch_profile.json
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import io
import os
import pstats
import statistics
import tempfile
import time

import torch  # noqa: F401  (like a notebook kernel)


def stamp(rec_dir: str) -> None:
    with open(os.path.join(rec_dir, f"enter_{os.environ['RANK']}"), "w") as f:
        f.write(repr(time.time()))


def timed(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return 1e3 * (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    import nbdist
    from nbdist._io import atomic_write_json

    launch_mod = importlib.import_module("nbdist.launch")
    pieces = {
        "nvml_gpus (first)": timed(launch_mod._nvml_gpus),
        "nvml_gpus (cached)": timed(launch_mod._nvml_gpus),
        "cuda_initialized": timed(launch_mod.cuda_initialized),
        "gpus_lack_peer_access (first)": timed(launch_mod.gpus_lack_peer_access, None),
        "gpus_lack_peer_access (cached)": timed(launch_mod.gpus_lack_peer_access, None),
        "free_port": timed(launch_mod.free_port),
    }
    entries = []
    prof = cProfile.Profile()
    for i in range(args.repeats + 1):
        with tempfile.TemporaryDirectory() as rec:
            if i:
                prof.enable()
            t0 = time.time()
            nbdist.launch(stamp, (rec,), nprocs=args.ranks, start_method="fork", stream=False)
            if i:
                prof.disable()
                entries.append(1e3 * (max(float(open(os.path.join(rec, f"enter_{r}")).read())
                                          for r in range(args.ranks)) - t0))
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(25)
    for k, v in pieces.items():
        print(f"{k:34s} {v:8.2f} ms")
    print(f"fork launch call -> every rank in fn: median {statistics.median(entries):.1f} ms, "
          f"min {min(entries):.1f} ms over {len(entries)}")
    print(text.getvalue())
    if args.out:
        atomic_write_json(args.out, {"pieces_ms": pieces, "entry_ms": entries,
                                     "profile": text.getvalue()}, indent=1)


if __name__ == "__main__":
    main()
