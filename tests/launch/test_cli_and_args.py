"""nbdist run on a script; bad arguments named in LaunchValueError; exec failures."""

import os
import subprocess
import sys

import pytest
from support import processes_with_job_ids  # noqa: F401

import nbdist
from nbdist._core import launch as core

SCRIPT = """
import os, sys, torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.tensor([float(dist.get_rank() + 1)]); dist.all_reduce(t)
print("rank", os.environ["RANK"], "local", os.environ["LOCAL_RANK"], "of",
      os.environ["WORLD_SIZE"], "sum", t.item(), "args", sys.argv[1:])
dist.destroy_process_group()
if os.environ["RANK"] == "1" and "fail" in sys.argv:
    sys.exit(7)
"""


def run_cli(tmp_path, *args):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    return subprocess.run([sys.executable, "-m", "nbdist", "run", "--nprocs", "2",
                           "--log-dir", str(tmp_path / "logs"), str(script), *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_runs_a_script_with_torchrun_environment(tmp_path):
    res = run_cli(tmp_path, "--lr", "3")
    assert res.returncode == 0, res.stderr
    assert "[rank 0] rank 0 local 0 of 2 sum 3.0 args ['--lr', '3']" in res.stdout
    assert "[rank 1] rank 1 local 1 of 2 sum 3.0 args ['--lr', '3']" in res.stdout


def test_cli_exit_code_is_the_root_cause_rank(tmp_path):
    res = run_cli(tmp_path, "fail")
    assert res.returncode == 7
    assert "rank 1 (of 2) failed: exit code 7" in res.stderr


def f(x=0):
    return x


@pytest.mark.parametrize(
    "kwargs, names",
    [
        (dict(nprocs=0), "nprocs"),
        (dict(nprocs="2"), "nprocs"),
        (dict(nprocs=2, start_method="thread"), "start_method"),
        (dict(nprocs=2, gpus=[0, 0]), "gpus"),
        (dict(nprocs=2, gpus="a,b"), "gpus"),
        (dict(nprocs=2, env={"A": object()}), "env"),
        (dict(nprocs=2, env=["A=1"]), "env"),
        (dict(nprocs=2, timeout=-1), "timeout"),
        (dict(nprocs=2, max_restarts=-1), "max_restarts"),
        (dict(nprocs=2, nnodes=2, node_rank=2, master_port=1234), "node_rank"),
        (dict(nprocs=2, nnodes=2), "master_port"),
        (dict(nprocs=2, master_port=70000), "master_port"),
        (dict(nprocs=2, args=5), "args"),
        (dict(nprocs=2, kwargs=[1]), "kwargs"),
        (dict(nprocs=2, grace=-1), "grace"),
        (dict(nprocs=2, prefix="no rank"), "prefix"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, names):
    with pytest.raises(nbdist.LaunchValueError, match=names) as info:
        nbdist.launch(f, **kwargs)
    assert isinstance(info.value, ValueError)


def test_not_callable_and_no_gpu_defaults(monkeypatch):
    with pytest.raises(nbdist.LaunchValueError, match="fn must be callable"):
        nbdist.launch(42, nprocs=2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(nbdist.LaunchValueError, match="nprocs must be given"):
        nbdist.launch(f)


def test_unpicklable_payload_for_spawn_is_named():
    import threading

    lock = threading.Lock()
    with pytest.raises(nbdist.LaunchValueError, match="picklable"):
        nbdist.launch(f, (lock,), nprocs=1, start_method="spawn")


def test_exec_failure_names_stage_and_errno(tmp_path):
    with pytest.raises(nbdist.LaunchError, match=r"execve failed: No such file.*errno 2"):
        core.spawn(["/nonexistent/program"], [], "")
    with pytest.raises(nbdist.LaunchError, match=r"chdir failed \(directory '/nonexistent'\)"):
        core.spawn(["true"], ["PATH=/bin:/usr/bin"], "/nonexistent")
    with pytest.raises(nbdist.LaunchValueError, match="not found in PATH"):
        core.spawn(["no-such-program-nbdist"], ["PATH=/bin"], "")


def test_notebook_launcher_has_accelerates_signature_and_returns_results():
    import inspect

    accelerate = pytest.importorskip("accelerate")
    ours = inspect.signature(nbdist.notebook_launcher).parameters
    for name, p in inspect.signature(accelerate.notebook_launcher).parameters.items():
        assert name in ours and ours[name].default == p.default, name

    def train(scale):
        return (os.environ["ACCELERATE_MIXED_PRECISION"], int(os.environ["RANK"]) * scale)

    assert nbdist.notebook_launcher(train, (10,), num_processes=2, mixed_precision="bf16") == [
        ("bf16", 0), ("bf16", 10)]


def test_cli_runs_a_module(tmp_path):
    res = subprocess.run([sys.executable, "-m", "nbdist", "run", "--nprocs", "2", "--log-dir",
                          str(tmp_path), "-m", "platform"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("[rank 0] Linux") == 1 and res.stdout.count("[rank 1] Linux") == 1


def test_cli_timeout_of_a_script_is_a_timeout_not_a_failure(tmp_path):
    # A script has no handler for the stack-dump signal the timeout sends first (SIGUSR2): it
    # ends by it, and that is the timeout's doing, not a rank that failed.
    script = tmp_path / "slow.py"
    script.write_text("import time\nprint('started', flush=True)\ntime.sleep(60)\n")
    res = subprocess.run([sys.executable, "-m", "nbdist", "run", "--nprocs", "2", "--timeout",
                          "1", "--log-dir", str(tmp_path / "logs"), str(script)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 124, res.stderr
    assert "timed out after 1" in res.stderr and "failed" not in res.stderr, res.stderr
