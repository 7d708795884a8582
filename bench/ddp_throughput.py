#!/usr/bin/env python3
"""Training throughput: torch DDP vs nbdist.ddp.DDP vs nbdist.ddp.train, 1 and N GPUs, one run.

GPT-2 124M (vocab 50304, 12 layers, d 768, T 1024), bf16 autocast, fused AdamW, grad clipping at
1.0, micro-batch 16, grad_accum 1 and 4. Every variant runs the same model, data and step in the
same processes. For N GPUs it also runs with NCCL_P2P_DISABLE=1 (the PCIe / T4 path).

Reported per variant: tokens/s (all GPUs), scaling efficiency (vs N x the 1-GPU plain loop), MFU,
exposed communication (end of backward -> last bucket's all-reduce done, as a share of the step;
for the two DDP wrappers) and communication overhead ((step with sync - step under no_sync) /
step, which also counts backward slowed down by NCCL kernels beside it).

    python bench/ddp_throughput.py --out bench/results/ddp_throughput.json
    python bench/ddp_throughput.py --tiny --device cpu --out /tmp/ddp.json   # smoke test on CPU
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import socket
import sys
import time

# Ask NVML, not the CUDA runtime, whether there are GPUs: the launcher may fork the ranks, and a
# parent that initialized CUDA cannot fork CUDA users.
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

import torch  # noqa: E402
import torch._dynamo  # noqa: E402  (variants set its config)
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from nbdist._io import atomic_write_json  # noqa: E402

# ---------------------------------------------------------------------------------------------
# model (nanoGPT-style GPT-2 with tied embeddings and flash attention)


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab: int, layers: int, d: int, heads: int, block: int) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight
        n = sum(p.numel() for p in self.parameters())
        self.flops_per_token = 6 * n + 12 * layers * d * block  # PaLM appendix B estimate

    def forward(self, idx: torch.Tensor, targets: torch.Tensor):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        logits = self.lm_head(self.ln_f(x))
        return logits, F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))


# ---------------------------------------------------------------------------------------------
# one rank


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _TailProbe:
    """Exposed communication as the issue defines it: from the end of backward to the moment the
    last bucket's all-reduce is done. Both reducers (torch's and ours) queue one final callback on
    the autograd engine that waits for their buckets; this probe queues one callback before it
    (from a pre-hook on the root of backward: "backward ended") which queues another after it
    ("all buckets done"). On a GPU both are CUDA events on the current stream."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[list] = []
        self.armed = False

    def _mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def watch(self, root: torch.Tensor) -> None:
        if not self.armed or root.grad_fn is None:
            return
        engine = torch.autograd.Variable._execution_engine

        def all_done():
            self.marks[-1].append(self._mark())

        def backward_ended():
            self.marks.append([self._mark()])
            engine.queue_callback(all_done)  # runs after the reducer's callback, queued earlier

        root.grad_fn.register_prehook(lambda grads: engine.queue_callback(backward_ended))

    def mean_ms(self) -> float | None:
        done = [m for m in self.marks if len(m) == 2]
        if not done:
            return None
        if self.cuda:
            return sum(a.elapsed_time(b) for a, b in done) / len(done)
        return sum(b - a for a, b in done) / len(done) * 1e3


def _hand_loop(model, wrapped, batches, accum, steps, device, amp, no_sync_all=False,
               probe=None, set_to_none=True, profile=None):
    """The usual hand-written loop (nanoGPT): returns seconds per step over `steps` steps. fp16
    adds torch's GradScaler the way its documentation clips (unscale_, clip, step, update).
    profile: a dict that receives _profile_steps' summary of 3 more steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1,
                            fused=device.type == "cuda")
    no_sync = getattr(wrapped, "no_sync", None)
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None

    def one_step(i):
        if probe is not None:
            probe.armed = steps[0] <= i < sum(steps)  # timed steps only
        for m in range(accum):
            x, y = batches[(i * accum + m) % len(batches)]
            last = m == accum - 1 and not no_sync_all
            ctx = no_sync() if (no_sync is not None and not last) else _null()
            with ctx:
                with torch.autocast(device.type, dtype=amp):
                    loss = wrapped(x, y)[1]
                scaled = loss / accum
                if scaler is not None:
                    scaled = scaler.scale(scaled)
                if last and probe is not None:
                    probe.watch(scaled)
                scaled.backward()
        if scaler is not None:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=set_to_none)

    sec = _time(one_step, steps, device)
    if profile is not None:
        profile.update(_profile_steps(one_step, sum(steps), 3, device))
    return sec


def _profile_steps(one_step, first: int, n: int, device) -> dict:
    """n more steps under torch.profiler, summarized per step from the CUDA kernel trace: the
    span, the compute stream's busy time and idle gaps (busy = union of its kernels), and kernel
    time by kind over all streams (NCCL kernels run on their own stream)."""
    import json
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    if device.type != "cuda":
        return {}
    _sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(n):
            one_step(first + i)
        _sync(device)
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    prof.export_chrome_trace(path)
    with open(path) as f:
        events = json.load(f)["traceEvents"]
    os.unlink(path)
    kernels = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")
               and "dur" in e]
    if not kernels:
        return {}
    kinds = {"nccl": ("nccl",), "gemm": ("gemm", "cutlass", "nvjet", "xmma", "sm90", "sm80"),
             "attention": ("flash", "fmha", "attention"),
             "optimizer": ("adam", "multi_tensor", "foreach"),
             "embedding": ("embedding", "index_put", "indexing", "scatter", "gather"),
             "norm": ("norm",), "copy/fill": ("memcpy", "memset", "copy", "fill")}
    by_kind: dict[str, float] = {}
    streams: dict[int, list] = {}
    for e in kernels:
        name = e["name"].lower()
        kind = next((k for k, keys in kinds.items() if any(x in name for x in keys)), "other")
        if e.get("cat") != "kernel":
            kind = "copy/fill"
        by_kind[kind] = by_kind.get(kind, 0.0) + e["dur"]
        if kind != "nccl":
            streams.setdefault(e.get("args", {}).get("stream", -1), []).append(e)
    compute = max(streams.values(), key=lambda ks: sum(k["dur"] for k in ks))
    compute.sort(key=lambda k: k["ts"])
    busy, end = 0.0, None
    for k in compute:
        a, b = k["ts"], k["ts"] + k["dur"]
        if end is None or a >= end:
            busy += b - a
            end = b
        elif b > end:
            busy += b - end
            end = b
    span = max(k["ts"] + k["dur"] for k in kernels) - min(k["ts"] for k in kernels)
    return {"steps": n, "span_ms": span / n / 1e3, "compute_busy_ms": busy / n / 1e3,
            "compute_idle_ms": (span - busy) / n / 1e3,
            "kernel_ms": {k: v / n / 1e3 for k, v in sorted(by_kind.items())}}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _time(one_step, steps, device):
    warm, timed = steps
    for i in range(warm):
        one_step(i)
    _sync(device)
    t0 = time.perf_counter()
    for i in range(timed):
        one_step(warm + i)
    _sync(device)
    return (time.perf_counter() - t0) / timed


def _parse_variant(spec: str):
    """'nbdist_ddp:ctas=4:hp=1' -> ('nbdist_ddp', {'ctas': '4', 'hp': '1'}). Options (sweeps):
    ctas = NCCL max CTAs of a dedicated gradient communicator, hp = 1 for a high-priority NCCL
    stream, bucket / first = bucket sizes in MiB, aff = 1 to pin each rank's main thread to its
    own cores, each = 1 for plain in a multi-rank sweep (every rank trains alone), t = nbdist's
    transport (nccl, peer, host, auto), piece = copy-engine piece size in KiB, emb = 0 to
    all-reduce the embedding's gradient densely (nbdist's embedding_rows=False), none = 0 for
    zero_grad(set_to_none=False) in the hand-written loop, prof = 1 to profile 3 more steps
    (plain and the DDP wrappers; with and without sync), prec = fp16 for fp16 autocast with a
    dynamic loss scaler (the hand-written loops: torch's GradScaler, unscale_ before clipping, as
    its documentation shows; train(): precision="fp16"), comp = 1 to run the model through
    torch.compile (default inductor; wrapped by the DDPs as nanoGPT does: DDP(compile(model))),
    ddpopt = 0 to turn dynamo's graph splitting at DDP buckets off (torch._dynamo.config
    .optimize_ddp)."""
    name, *rest = spec.split(":")
    return name, dict(kv.split("=", 1) for kv in rest)


def _pin_main_thread(opts: dict, rank: int, world: int):
    """aff=1: pins this rank's main thread to its own 1/world of the CPUs, whole cores together
    (hyperthread siblings stay with one rank); returns the previous CPU set to restore."""
    if opts.get("aff") != "1":
        return None
    before = os.sched_getaffinity(0)

    def core_of(cpu):
        base = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
        try:
            return tuple(int(open(base + f).read()) for f in ("physical_package_id", "core_id"))
        except OSError:
            return (0, cpu)

    cores: dict = {}
    for cpu in sorted(before):
        cores.setdefault(core_of(cpu), []).append(cpu)
    groups = list(cores.values())
    per = max(1, len(groups) // world)
    mine = [c for g in groups[rank * per:(rank + 1) * per] for c in g] or sorted(before)
    os.sched_setaffinity(0, mine)
    return before


def _comm_group(opts: dict, device):
    """None (the default group) or a dedicated NCCL group configured by the variant's options."""
    import torch.distributed as dist

    if device.type != "cuda" or not ({"ctas", "hp"} & set(opts)):
        return None
    pg_opts = dist.ProcessGroupNCCL.Options()
    if "ctas" in opts:
        pg_opts.config.max_ctas = int(opts["ctas"])
    if opts.get("hp") == "1":
        pg_opts.is_high_priority_stream = True
    return dist.new_group(ranks=list(range(dist.get_world_size())), backend="nccl",
                          pg_options=pg_opts)


def _transport_of(wrapped) -> str:
    """What averaged the gradients: torch DDP's process group, or nbdist's chosen transport."""
    reducer = getattr(wrapped, "reducer", None)
    if reducer is not None and hasattr(reducer, "transport"):
        note = reducer.transport_note
        rows = reducer.embedding_row_exchanges
        return (reducer.transport + (f" ({note})" if note else "") +
                (f", embedding rows exchanged {rows} times" if rows else ""))
    return "process group"


def _rank(args: dict) -> dict:
    import torch.distributed as dist

    import nbdist.ddp as nd

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // max(1, int(os.environ["WORLD_SIZE"]))))
    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    if args["device"] == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count()
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        dist.init_process_group("nccl", device_id=device,
                                timeout=datetime.timedelta(seconds=300))
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    cfg = args["model"]
    g = torch.Generator(device="cpu").manual_seed(1234 + rank)
    batches = []
    for _ in range(8):
        t = torch.randint(0, cfg["vocab"], (args["micro_batch"], cfg["block"] + 1), generator=g)
        t = t.to(device)
        batches.append((t[:, :-1].contiguous(), t[:, 1:].contiguous()))
    tokens_per_step = args["micro_batch"] * cfg["block"] * world  # per micro-step, all ranks
    steps = (args["warmup"], args["steps"])
    out = {}

    def fresh():
        torch.manual_seed(0)
        m = GPT(**cfg).to(device)
        return m

    def record(name, accum, sec, exposed=None, flops=0.0, overhead=None, transport=None,
               profile=None):
        tps = tokens_per_step * accum / sec
        # exposed_comm_frac: end of backward -> last bucket done, over the step time.
        # comm_overhead_frac: (step with sync - step under no_sync) / step; it also counts
        # compute slowed down by NCCL kernels running beside backward.
        out[f"{name}/accum{accum}"] = {"tokens_per_s": tps, "step_s": sec,
                                       "exposed_comm_frac": exposed,
                                       "comm_overhead_frac": overhead, "flops_per_token": flops,
                                       "transport": transport}
        if device.type == "cuda":  # the variant's peak (model, gradients, optimizer state, ...)
            out[f"{name}/accum{accum}"]["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        if profile:
            out[f"{name}/accum{accum}"]["profile"] = profile
            if rank == 0:
                print(f"profile {name}/accum{accum}: {profile}", flush=True)
        if rank == 0:  # in the log as it happens: a later variant that fails loses nothing
            print(f"variant {name}/accum{accum}: {1e3 * sec:.2f} ms/step, {tps:,.0f} tokens/s, "
                  f"overhead {overhead}, transport {transport}", flush=True)

    for accum in args["accum"]:
        for spec in args["variants"]:
            variant, opts = _parse_variant(spec)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            model = fresh()
            flops = model.flops_per_token
            if "piece" in opts:  # copy-engine piece size, read when the reducer is built
                os.environ["NBDIST_CE_PIECE_KB"] = opts["piece"]
            else:
                os.environ.pop("NBDIST_CE_PIECE_KB", None)
            pinned = _pin_main_thread(opts, rank, world)
            fp16 = opts.get("prec") == "fp16"
            amp = torch.float16 if fp16 else torch.bfloat16
            torch._dynamo.config.optimize_ddp = opts.get("ddpopt", "1") == "1"
            net = torch.compile(model) if opts.get("comp") == "1" else model
            if variant == "plain":
                # In a multi-rank sweep: every rank trains its own copy, no communication at all
                # (what running N processes side by side costs by itself).
                if world != 1 and opts.get("each") != "1":
                    continue
                prof = {} if opts.get("prof") == "1" else None
                record(spec, accum, _hand_loop(model, net, batches, accum, steps, device, amp,
                                               profile=prof), flops=flops, profile=prof)
            elif variant in ("torch_ddp", "nbdist_ddp"):
                try:
                    group = _comm_group(opts, device)
                except Exception as exc:  # an option this torch lacks: same on every rank
                    out[f"{spec}/accum{accum}"] = {"error": f"{type(exc).__name__}: {exc}"}
                    continue
                bucket = float(opts.get("bucket", 25))
                if variant == "torch_ddp":
                    wrapped = torch.nn.parallel.DistributedDataParallel(
                        net, device_ids=[device.index] if device.type == "cuda" else None,
                        bucket_cap_mb=bucket, process_group=group)
                else:
                    try:
                        wrapped = nd.DDP(net, process_group=group, bucket_cap_mb=bucket,
                                         first_bucket_mb=float(opts.get("first", 1)),
                                         transport=opts.get("t", "auto"),
                                         embedding_rows=opts.get("emb", "1") == "1")
                    except ValueError as exc:  # a transport this setting lacks: on every rank
                        out[f"{spec}/accum{accum}"] = {"error": str(exc)}
                        continue
                probe = _TailProbe(device)
                none = opts.get("none", "1") == "1"
                prof = {} if opts.get("prof") == "1" else None
                quiet_prof = {} if prof is not None else None
                sec = _hand_loop(model, wrapped, batches, accum, steps, device, amp, probe=probe,
                                 set_to_none=none, profile=prof)
                quiet = _hand_loop(model, wrapped, batches, accum, steps, device, amp,
                                   set_to_none=none,
                                   no_sync_all=True, profile=quiet_prof)
                tail = probe.mean_ms()
                record(spec, accum, sec, None if tail is None else tail / 1e3 / sec, flops,
                       overhead=max(0.0, (sec - quiet) / sec),
                       transport=_transport_of(wrapped),
                       profile=prof and dict(sync=prof, no_sync=quiet_prof))
            elif variant == "nbdist_train":
                tc = nd.TrainConfig(max_steps=sum(steps), grad_accum=accum, lr=1e-4,
                                    warmup_steps=0, precision="fp16" if fp16 else "bf16",
                                    log_every=0, grad_clip=1.0,
                                    shard_optimizer=opts.get("shard") == "1")
                # Wrapped here rather than by train(), so that tearing the reducer down (its
                # copy-engine buffers: ~1.5 GB to unpin and free with P2P off) happens after the
                # clock stops, as it does for the hand-written loops.
                transport = opts.get("t", "nccl" if tc.shard_optimizer else "auto")
                wrapped = nd.DDP(net, bucket_cap_mb=25, transport=transport,
                                 embedding_rows=opts.get("emb", "1") == "1")
                # Timed like the hand-written loops: from a synchronized device at the first
                # timed step's first forward to a synchronized device after the last step (the
                # loop's own per-step host times are off by the part of a step the host runs
                # ahead of the GPU).
                calls, start = [0], []

                def loss_fn(m, batch, calls=calls, start=start, first=steps[0] * accum):
                    if calls[0] == first:
                        _sync(device)
                        start.append(time.perf_counter())
                    calls[0] += 1
                    return m(*batch)[1]

                nd.train(wrapped, batches, tc, loss_fn=loss_fn)
                _sync(device)
                sec = (time.perf_counter() - start[0]) / steps[1]
                record(spec, accum, sec, None, flops, transport=_transport_of(wrapped))
                del wrapped
            del net
            torch._dynamo.reset()  # the next variant compiles its own model afresh
            if pinned is not None:
                os.sched_setaffinity(0, pinned)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
            dist.barrier()
    dist.destroy_process_group()
    return out


# ---------------------------------------------------------------------------------------------
# launching


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mp_worker(rank, world, port, args, q):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        q.put((rank, _rank(args)))
    except BaseException as e:  # noqa: BLE001
        import traceback
        q.put((rank, f"ERROR {e}\n{traceback.format_exc()}"))
        raise


def _launch(args: dict, world: int, env: dict) -> dict:
    os.environ.update(env)  # every rank inherits it (set before the ranks start NCCL)
    try:
        from nbdist import launch as nb_launch  # the project's launcher, when present
    except ImportError:
        nb_launch = None
    if nb_launch is not None:
        # env= as well: a pre-started zygote would not see later changes to os.environ.
        # NBDIST_BENCH_LOG_DIR: keep the ranks' logs (the device run copies them back).
        # NBDIST_BENCH_TIMEOUT: seconds, then every rank's Python stack lands in the error.
        limit = os.environ.get("NBDIST_BENCH_TIMEOUT")
        return nb_launch(_rank, args=(args,), nprocs=world, env=env,
                         log_dir=os.environ.get("NBDIST_BENCH_LOG_DIR"),
                         timeout=float(limit) if limit else None)[0]
    import torch.multiprocessing as mp
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_mp_worker, args=(r, world, port, args, q)) for r in range(world)]
    for p in procs:
        p.start()
    results = {}
    try:
        while len(results) < world:
            rank, value = q.get(timeout=600)
            if isinstance(value, str):
                raise RuntimeError(f"rank {rank} failed: {value}")
            results[rank] = value
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    return results[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON results path")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--gpus", type=int, default=0,
                    help="ranks for the N-GPU runs (default: all, max 2)")
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--accum", default="1,4")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--no-p2p-off", action="store_true", help="skip the NCCL_P2P_DISABLE=1 run")
    ap.add_argument("--tiny", action="store_true", help="a tiny model (smoke test)")
    ap.add_argument("--sweep", default="",
                    help="comma-separated variants (e.g. torch_ddp,nbdist_ddp:ctas=4:hp=1) to "
                         "compare under --settings instead of the standard table")
    ap.add_argument("--settings", default="p2p,nop2p",
                    help="for --sweep: p2p, nop2p (NCCL_P2P_DISABLE=1), nop2p_ce (and "
                         "NCCL_SHM_USE_CUDA_MEMCPY=1), p2p_conn / nop2p_conn "
                         "(CUDA_DEVICE_MAX_CONNECTIONS=32)")
    a = ap.parse_args()

    if a.tiny:
        model = dict(vocab=512, layers=2, d=64, heads=2, block=min(a.seq, 64))
    else:
        model = dict(vocab=50304, layers=12, d=768, heads=12, block=a.seq)
    n = a.gpus or (min(2, torch.cuda.device_count()) if a.device == "cuda" else 2)
    base = dict(device=a.device, model=model, micro_batch=a.micro_batch, warmup=a.warmup,
                steps=a.steps, accum=[int(x) for x in a.accum.split(",")])
    env = {"NCCL_NVLS_ENABLE": "0", "NCCL_DEBUG": os.environ.get("NCCL_DEBUG", "WARN")}
    if a.sweep:
        return _sweep(a, base, env, n)
    runs = {}
    t0 = time.time()
    runs["1"] = _launch(dict(base, variants=["plain"]), 1, dict(env, NCCL_P2P_DISABLE="0"))
    if n > 1:
        # nbdist_ddp:t=nccl is nbdist's reducer on the process group's all-reduce; nbdist_ddp and
        # nbdist_train use the default transport (the copy engines when the ranks share a host
        # without P2P); :emb=0 all-reduces the embedding's gradient densely; nbdist_train:shard=1
        # shards its AdamW (reduce-scatter, 1/world of the update, all-gather).
        variants = ["torch_ddp", "nbdist_ddp:t=nccl", "nbdist_ddp:t=peer", "nbdist_ddp:emb=0",
                    "nbdist_ddp", "nbdist_train", "nbdist_train:shard=1"]
        runs[str(n)] = _launch(dict(base, variants=variants), n, dict(env, NCCL_P2P_DISABLE="0"))
        if not a.no_p2p_off and a.device == "cuda":
            runs[f"{n}_p2p_off"] = _launch(dict(base, variants=variants), n,
                                           dict(env, NCCL_P2P_DISABLE="1"))

    peak, name = 0.0, "cpu"
    if a.device == "cuda":  # only now: initializing CUDA here earlier would rule out fork
        name = torch.cuda.get_device_name(0)
        peak = 989e12 if ("H100" in name or "H200" in name) else 312e12 if "A100" in name else 0.0
    rows = []
    for accum in base["accum"]:
        one = runs["1"][f"plain/accum{accum}"]["tokens_per_s"]
        rows.append(dict(setting="1 GPU", variant="plain", accum=accum, world=1,
                         **runs["1"][f"plain/accum{accum}"]))
        for key, world in ((str(n), n), (f"{n}_p2p_off", n)):
            if key not in runs:
                continue
            for variant in variants:
                r = runs[key][f"{variant}/accum{accum}"]
                if "error" in r:  # e.g. transport='peer' with P2P off
                    print(f"{key} {variant}: {r['error']}")
                    continue
                rows.append(dict(setting=f"{world} GPUs" + (" P2P off" if "off" in key else ""),
                                 variant=variant, accum=accum, world=world, **r,
                                 scaling=r["tokens_per_s"] / (world * one)))
    for r in rows:
        r["mfu"] = (r["flops_per_token"] * r["tokens_per_s"] / (peak * r["world"])
                    if peak else None)
        r.setdefault("scaling", 1.0)
    # Speed-ups against torch DDP in the same setting.
    for r in rows:
        ref = next((x for x in rows if x["setting"] == r["setting"] and x["accum"] == r["accum"]
                    and x["variant"] == "torch_ddp"), None)
        r["vs_torch_ddp"] = r["tokens_per_s"] / ref["tokens_per_s"] if ref else None

    hdr = f"{'setting':<16}{'variant':<22}{'accum':>6}{'tokens/s':>12}{'scaling':>9}{'vs DDP':>8}" \
          f"{'exposed':>9}{'overhead':>9}{'MFU':>7}{'peak GiB':>10}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        def fmt(v, f):
            missing = v is None or (isinstance(v, float) and math.isnan(v))
            return "-" if missing else f.format(v)
        print(f"{r['setting']:<16}{r['variant']:<22}{r['accum']:>6}{r['tokens_per_s']:>12,.0f}"
              f"{fmt(r['scaling'], '{:.1%}'):>9}{fmt(r['vs_torch_ddp'], '{:.3f}'):>8}"
              f"{fmt(r['exposed_comm_frac'], '{:.1%}'):>9}"
              f"{fmt(r.get('comm_overhead_frac'), '{:.1%}'):>9}{fmt(r['mfu'], '{:.1%}'):>7}"
              f"{fmt(r.get('peak_mem_gib'), '{:.1f}'):>10}")
    result = dict(
        benchmark="ddp_throughput", model=model, micro_batch=a.micro_batch, warmup=a.warmup,
        steps=a.steps, device=a.device,
        device_name=name,
        torch=torch.__version__, gpus=n, wall_s=time.time() - t0, rows=rows)
    atomic_write_json(a.out, result, indent=1)
    print(f"wrote {a.out} in {time.time() - t0:.0f} s")
    return 0


def _sweep(a, base: dict, env: dict, n: int) -> int:
    """Variants side by side per setting (one launch per setting, so the same processes run every
    variant); prints step times and writes the raw per-variant figures."""
    settings = {"p2p": {"NCCL_P2P_DISABLE": "0"}, "nop2p": {"NCCL_P2P_DISABLE": "1"},
                "nop2p_ce": {"NCCL_P2P_DISABLE": "1", "NCCL_SHM_USE_CUDA_MEMCPY": "1"},
                # more hardware work queues: a stream blocked on a flag cannot stall another
                "p2p_conn": {"NCCL_P2P_DISABLE": "0", "CUDA_DEVICE_MAX_CONNECTIONS": "32"},
                "nop2p_conn": {"NCCL_P2P_DISABLE": "1", "CUDA_DEVICE_MAX_CONNECTIONS": "32"}}
    variants = a.sweep.split(",")
    twice = sorted({v for v in variants if variants.count(v) > 1})
    if twice:  # results are keyed by the variant: a repeat would overwrite the first run
        raise SystemExit(f"--sweep lists {', '.join(twice)} more than once")
    t0 = time.time()
    # One GPU alone, the baseline of scaling: compiled too when some variant compiles.
    compiled = any(_parse_variant(v)[1].get("comp") == "1" for v in variants)
    plains = ["plain"] + (["plain:comp=1"] if compiled else [])
    out = {"plain": _launch(dict(base, variants=plains), 1, dict(env, NCCL_P2P_DISABLE="0"))}
    for name in a.settings.split(","):
        try:
            out[name] = _launch(dict(base, variants=variants), n, dict(env, **settings[name]))
        except Exception as exc:  # a setting that hangs or crashes (a result, not the end)
            print(f"setting {name} failed: {str(exc).splitlines()[0]}", flush=True)
            out[name] = {"error": str(exc)[:4000]}
    print(f"{'setting':<10}{'variant':<34}{'accum':>6}{'step ms':>9}{'tokens/s':>11}"
          f"{'scaling':>9}{'vs DDP':>8}{'exposed':>9}{'overhead':>9}")
    for accum in base["accum"]:
        for name in a.settings.split(","):
            if "error" in out[name]:
                print(f"{name:<10}failed: {out[name]['error'].splitlines()[0][:100]}")
                continue
            for v in variants:
                r = out[name].get(f"{v}/accum{accum}")
                if r is None or "error" in r:
                    print(f"{name:<10}{v:<34}{accum:>6}  {r and r['error']}")
                    continue
                # against torch DDP on the same model and precision (fp16 rows against torch's
                # GradScaler, compiled against compiled): its variant with those options, in the
                # order this one lists them
                same = "".join(f":{k}={x}" for k, x in _parse_variant(v)[1].items()
                               if k in ("prec", "comp", "ddpopt"))
                ref = out[name].get(f"torch_ddp{same}/accum{accum}", {}).get("tokens_per_s")
                alone = "plain:comp=1" if _parse_variant(v)[1].get("comp") == "1" else "plain"
                one = out["plain"][f"{alone}/accum{accum}"]["tokens_per_s"]
                r["scaling"] = r["tokens_per_s"] / (n * one)
                r["vs_torch_ddp"] = r["tokens_per_s"] / ref if ref else None
                print(f"{name:<10}{v:<34}{accum:>6}{1e3 * r['step_s']:>9.2f}"
                      f"{r['tokens_per_s']:>11,.0f}{r['scaling']:>9.1%}"
                      f"{(r['vs_torch_ddp'] or 0):>8.3f}"
                      f"{(r['exposed_comm_frac'] or 0):>9.1%}"
                      f"{(r['comm_overhead_frac'] or 0):>9.1%}")
    atomic_write_json(a.out, dict(benchmark="ddp_sweep", runs=out, gpus=n,
                                  wall_s=time.time() - t0), indent=1)
    print(f"wrote {a.out} in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
