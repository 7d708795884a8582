"""GPU paths: NCCL across every visible GPU, and launches after the kernel initialized CUDA
(auto must pick the zygote; fork must be refused). Skipped where there is no GPU."""

import os
import subprocess
import sys
import textwrap

import pytest

from nbdist.launch import visible_gpu_count

from . import helpers

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(visible_gpu_count() == 0, reason="needs CUDA GPUs"),
]

# Runs in a fresh interpreter so that CUDA gets initialized there, never in pytest's process.
AFTER_CUDA = textwrap.dedent("""
    import os, torch, nbdist
    x = torch.ones(4, device="cuda")  # the "kernel" has now initialized CUDA
    assert torch.cuda.is_initialized()
    n = torch.cuda.device_count()

    def nccl_sum():
        import torch, torch.distributed as dist
        local = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        t = torch.full((1 << 20,), float(dist.get_rank() + 1), device=f"cuda:{local}")
        dist.all_reduce(t)
        torch.cuda.synchronize()
        dist.destroy_process_group()
        return t[0].item()

    got = nbdist.launch(nccl_sum, nprocs=n)  # auto -> zygote
    assert got == [n * (n + 1) / 2] * n, got
    try:
        nbdist.launch(nccl_sum, nprocs=n, start_method="fork")
    except nbdist.LaunchValueError as e:
        assert "CUDA is already initialized" in str(e)
    else:
        raise AssertionError("fork was not refused after CUDA was initialized")
    print("AFTER_CUDA_OK", got)
""")


def test_nccl_allreduce_on_every_gpu_after_the_parent_used_cuda():
    res = subprocess.run([sys.executable, "-c", AFTER_CUDA], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "AFTER_CUDA_OK" in res.stdout
    assert "start method zygote (CUDA is initialized here)" in res.stdout


# The ranks run helpers.nccl_rank, imported by the script the way a notebook imports its
# own module (fork sends no pickle).
FORK_IN_CLEAN_PARENT = textwrap.dedent(f"""
import sys
import nbdist

sys.path.insert(0, {TESTS_DIR!r})
from launch.helpers import nccl_rank

print("FORK_RESULTS", nbdist.launch(nccl_rank, start_method="fork"))
""")


def test_nccl_allreduce_across_all_gpus_fork():
    # This pytest process has run cuInit (torch.cuda.is_available in the skip marks), after which
    # no forked child can use CUDA and nbdist refuses fork; a parent that never touched CUDA can.
    n = visible_gpu_count()
    res = subprocess.run([sys.executable, "-c", FORK_IN_CLEAN_PARENT], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"FORK_RESULTS {[float(n)] * n}" in res.stdout
    assert "start method fork" in res.stdout


def test_nccl_allreduce_across_all_gpus_spawn():
    import nbdist

    n = visible_gpu_count()
    assert nbdist.launch(helpers.nccl_rank, start_method="spawn") == [float(n)] * n
