"""The launcher itself interrupted or killed: no rank, and no rank's child, outlives it."""

import os
import signal
import subprocess
import sys
import time

import pytest

from support import processes_with_job_ids, wait_gone

HERE = os.path.dirname(os.path.abspath(__file__))


def start_parent(method, tmp_path):
    log_dir, pid_dir = tmp_path / "logs", tmp_path / "pids"
    log_dir.mkdir()
    pid_dir.mkdir()
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "parent_script.py"), method,
                             str(log_dir), str(pid_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while len(list(pid_dir.glob("*.pids"))) < 2:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the launcher did not start its ranks:\n{out}\n{err}")
        time.sleep(0.05)
    time.sleep(0.2)
    pids = set()
    for f in pid_dir.glob("*.pids"):
        pids.update(int(p) for p in f.read_text().split())
    (job_id,) = [p.name for p in log_dir.iterdir()]
    return proc, job_id, pids


def test_sigint_to_launcher_tears_every_rank_down(tmp_path, request):
    proc, job_id, pids = start_parent("fork", tmp_path)
    request.node.extra_job_ids, request.node.extra_pids = [job_id], pids
    assert processes_with_job_ids({job_id})  # the ranks' children carry the job id
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert wait_gone({job_id}, pids, within=5.0) == []


@pytest.mark.parametrize("method", ["fork", "spawn", "zygote"])
def test_sigkill_of_launcher_takes_ranks_and_grandchildren_within_2s(tmp_path, request, method):
    proc, job_id, pids = start_parent(method, tmp_path)
    request.node.extra_job_ids, request.node.extra_pids = [job_id], pids
    proc.kill()
    proc.communicate(timeout=10)
    assert wait_gone({job_id}, pids, within=2.0) == []
