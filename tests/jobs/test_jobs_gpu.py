"""On GPUs (bench/device.sh): two concurrent single-GPU jobs, each seeing only its own GPU, and a
monitored foreground beside a GPU load whose record holds a real energy figure. Skipped without
GPUs. The test process never initializes CUDA itself (NVML counts the GPUs), so fork stays safe."""

from __future__ import annotations

import os
import time

import pytest

import nbdist
from nbdist.launch import visible_gpu_count

pytestmark = pytest.mark.gpu

NGPU = visible_gpu_count()
needs_gpu = pytest.mark.skipif(NGPU < 1, reason="needs a CUDA GPU")


def busy_gpu(tag, ready_dir, seconds):
    """Marks itself started, waits until the other job started too (so the two provably ran at
    the same time), then multiplies matrices on its GPU for ``seconds``."""
    import torch

    assert torch.cuda.device_count() == 1, torch.cuda.device_count()
    props = torch.cuda.get_device_properties(0)
    open(os.path.join(ready_dir, tag), "w").close()
    deadline = time.time() + 120
    while len(os.listdir(ready_dir)) < 2:
        if time.time() > deadline:
            raise TimeoutError(f"job {tag}: the other job never started")
        time.sleep(0.01)
    a = torch.randn(4096, 4096, device="cuda")
    end = time.time() + seconds
    n = 0
    while time.time() < end:
        a = torch.tanh(a @ a)
        n += 1
    torch.cuda.synchronize()
    return {"tag": tag, "uuid": str(getattr(props, "uuid", "")), "name": props.name,
            "cvd": os.environ.get("CUDA_VISIBLE_DEVICES"), "iters": n}


@needs_gpu
def test_two_concurrent_single_gpu_jobs(tmp_path):
    gpus = [0, 1] if NGPU >= 2 else [0, 0]
    ready = str(tmp_path / "ready")
    os.makedirs(ready)
    a = nbdist.launch(busy_gpu, ("a", ready, 3.0), gpus=[gpus[0]], background=True,
                      log_dir=str(tmp_path))
    b = nbdist.launch(busy_gpu, ("b", ready, 3.0), gpus=[gpus[1]], background=True,
                      log_dir=str(tmp_path))
    (ra,), (rb,) = nbdist.wait_all(a, b, timeout=300)
    assert ra["cvd"] == str(gpus[0]) and rb["cvd"] == str(gpus[1])
    assert ra["iters"] > 0 and rb["iters"] > 0
    if NGPU >= 2:
        assert ra["uuid"] != rb["uuid"]  # really two different GPUs


GPU_LOAD = ("import time, torch\n"
            "a = torch.randn(8192, 8192, device='cuda')\n"
            "end = time.time() + 2\n"
            "while time.time() < end:\n"
            "    a = torch.tanh(a @ a)\n"
            "torch.cuda.synchronize()\n")


def train_gpu(seconds):
    import torch

    a = torch.randn(4096, 4096, device="cuda")
    end = time.time() + seconds
    while time.time() < end:
        a = torch.tanh(a @ a)
    torch.cuda.synchronize()
    return "trained"


@needs_gpu
def test_monitored_foreground_beside_a_gpu_load(tmp_path):
    import sys

    load_gpus = [1] if NGPU >= 2 else [0]
    load = nbdist.Load([sys.executable, "-c", GPU_LOAD], gpus=load_gpus, restart_delay=0.5,
                       warmup=1.0, grace=2)
    job = nbdist.launch(train_gpu, (6.0,), nprocs=1, gpus=[0], background=True,
                        background_load=load, monitor=True, log_dir=str(tmp_path))
    assert job.wait(timeout=300) == ["trained"]
    rec = job.record
    energy = rec["energy"]
    assert energy["attribution"] == "combined"
    if not nbdist.Monitor.available():
        pytest.skip(f"no NVML: {energy['reason']}")
    assert energy["available"] is True and energy["total_j"] > 0
    assert {g["gpu"] for g in energy["summary"]["gpus"]} == {0} | set(load_gpus)
    assert os.path.getsize(os.path.join(job.log_dir, "gpu.csv")) > 0
    assert rec["background_load"]["runs"]  # the load ran beside the training
    summary = job.energy()
    assert summary.total_j == pytest.approx(energy["total_j"])
    job.plot(str(tmp_path / "gpu.png"))
    assert os.path.getsize(tmp_path / "gpu.png") > 0
