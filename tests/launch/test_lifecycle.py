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


UNATTACHED_RANK = """
import os, signal, subprocess, sys, time
from nbdist import _core

core = _core.launch
pid_file, track = sys.argv[1], sys.argv[2] == "track"
fd = core.reaper_control_fd()  # starts this process's reaper
if core.fork_interpreter([], [], [], signal.SIGKILL, fd if track else -1) == 0:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(pid_file + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    os.rename(pid_file + ".tmp", pid_file)
    time.sleep(600)
    os._exit(0)
time.sleep(600)  # dies here, before it ever attaches (tracks) the rank
"""


@pytest.mark.parametrize("track", ["track", "no-track"])
def test_launcher_killed_before_attaching_a_rank_still_takes_its_children(tmp_path, request,
                                                                          track):
    """The window between a rank's fork and its attach: a rank forked with the reaper's pipe
    (fork and zygote start methods) tracks its own group first, so a launcher killed in that
    window still takes the rank's children. Without it (no-track) they would survive."""
    pid_file = tmp_path / "pids"
    proc = subprocess.Popen([sys.executable, "-c", UNATTACHED_RANK, str(pid_file), track])
    deadline = time.monotonic() + 60
    while not pid_file.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the rank did not start"
        time.sleep(0.05)
    pids = {int(p) for p in pid_file.read_text().split()}
    request.node.extra_pids = pids
    proc.kill()
    proc.wait(timeout=10)
    left = wait_gone(set(), pids, within=5.0)
    for pid in left:
        os.kill(pid[0], signal.SIGKILL)
    if track == "track":
        assert left == []
    else:
        assert [p for p, _ in left] != []


ZYGOTE_INTERRUPTED = """
import signal, time, psutil
from nbdist import _zygote

def interrupt(*_):
    raise KeyboardInterrupt

signal.signal(signal.SIGALRM, interrupt)
signal.setitimer(signal.ITIMER_REAL, 0.2)  # the zygote imports torch first: seconds
try:
    _zygote.get_zygote()
    print("started before the interrupt")
except KeyboardInterrupt:
    pass
time.sleep(0.2)
left = [p.pid for p in psutil.Process().children()
        if p.status() != psutil.STATUS_ZOMBIE and "nbdist._zygote" in " ".join(p.cmdline())]
print("left", left)
"""


def test_interrupting_the_first_zygote_start_leaves_no_zygote():
    # Ctrl-C while the kernel's zygote starts: the half-started zygote is stopped, not left for
    # as long as the kernel lives.
    res = subprocess.run([sys.executable, "-c", ZYGOTE_INTERRUPTED], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "left []", res.stdout
