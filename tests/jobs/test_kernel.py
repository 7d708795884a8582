"""In a real Jupyter kernel (nbclient): the %%nbdist magic (background in one cell, wait in a
later one; foreground; bad arguments; %nbdist_jobs; %nbdist_kill), and no process left behind
when the kernel shuts down or is killed.

Interrupting the kernel (jupyter_client, cell by cell) while a cell runs: a foreground launch
(fork, spawn, zygote), one caught while its ranks start, ddp.train() caught writing a checkpoint,
and a background job (its ranks run on through interrupts of other cells and of stream()); each
time the ranks are gone (or, for the background job, still there) and the next cell launches."""

from __future__ import annotations

import os
import queue
import re
import signal
import time

import pytest
from support import ROOT, alive, cell_text, execute_notebook, wait_gone

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

# A real kernel per test: a stuck cell fails the test in minutes (each takes ~10 s here).
pytestmark = pytest.mark.timeout(150)


def notebook(cells):
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}})
    for c in cells:
        tags = []
        if c.startswith("#raises\n"):
            c, tags = c[len("#raises\n"):], ["raises-exception"]
        nb.cells.append(nbformat.v4.new_code_cell(c, metadata={"tags": tags}))
    return nb


def outputs(cell) -> str:
    return cell_text(cell, errors=True)


def html_of(cell) -> str:
    return "".join(o["data"].get("text/html", "") for o in cell.outputs
                   if o["output_type"] in ("execute_result", "display_data"))


MAGIC_CELLS = [
    "%load_ext nbdist\nimport nbdist",
    "x = 20",
    "%%nbdist --bg --proc p0 --nprocs 2 --push x\n"
    "import os\n"
    "print('hello from rank', os.environ['RANK'], flush=True)\n"
    "x + int(os.environ['RANK'])",
    "print(p0.wait(timeout=120))",
    "%%nbdist --nprocs 1\nprint('foreground line')\n6 * 7",
    "p0",
    "%%nbdist --bg --proc sleeper\nimport time\ntime.sleep(600)",
    "%nbdist_kill sleeper 0.5",
    "%nbdist_jobs",
    "#raises\n%%nbdist --bg --proc 9lives\n1",
    "#raises\n%%nbdist --push undefined_thing\n1",
    "#raises\n%%nbdist --gpus zero\n1",
    "#raises\n%%nbdist --nprocs 1\nraise KeyError('from the cell')",
    "print(sleeper.status, p0.logs(rank=1).strip())",
    "awaited = await nbdist.jobs()[0]\nprint('awaited', awaited)",
]


def test_magic_in_a_real_kernel():
    nb = notebook(MAGIC_CELLS)
    execute_notebook(nb, ROOT, timeout=240)
    c = nb.cells
    assert "started in the background (2 ranks); p0.wait() waits for it" in outputs(c[2])
    assert "[20, 21]" in outputs(c[3])
    assert "[rank 0] foreground line" in outputs(c[4]) and "42" in outputs(c[4])
    assert "nbdist.Job" in html_of(c[5]) and "succeeded" in html_of(c[5])
    assert re.search(r"job \S+ killed", outputs(c[7]))
    jobs_table = outputs(c[8])
    assert re.search(r"^p0\s+\S+\s+succeeded\s+2", jobs_table, re.M)
    assert re.search(r"^sleeper\s+\S+\s+killed", jobs_table, re.M)
    assert "UsageError: %%nbdist: --proc must be a Python variable name, got '9lives'" in \
        outputs(c[9])
    assert "not defined in the notebook: undefined_thing" in outputs(c[10])
    assert "--gpus must be GPU indices" in outputs(c[11])
    assert "WorkerError" in outputs(c[12]) and "KeyError" in outputs(c[12])
    assert "<nbdist cell>" in outputs(c[12])  # the traceback names the cell
    assert outputs(c[13]).strip() == "killed hello from rank 1"
    assert "awaited [20, 21]" in outputs(c[14])  # top-level await in the kernel's event loop


LEAVE_RUNNING = [
    "import os, sys, time, nbdist",
    "def forever(pid_file):\n"
    "    import subprocess\n"
    "    child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
    "    with open(pid_file, 'w') as f:\n"
    "        f.write(f'{os.getpid()} {child.pid}\\n')\n"
    "    time.sleep(600)",
    "pid_file = os.path.join(os.environ['NBDIST_TEST_DIR'], 'pids')\n"
    "job = nbdist.launch(forever, (pid_file,), nprocs=1, background=True,\n"
    "                    background_load=nbdist.Load('sleep 600'))\n"
    "while not (os.path.exists(pid_file) and open(pid_file).read().endswith('\\n')) \\\n"
    "        or not job.load.runs:\n"
    "    time.sleep(0.05)\n"
    "print('PIDS', open(pid_file).read().strip(), job.load.runs[0]['pid'], 'JOB', job.id)",
]


def started_pids(cell) -> tuple[set[int], str]:
    m = re.search(r"PIDS ([\d ]+) JOB (\S+)", outputs(cell))
    assert m, outputs(cell)
    return {int(p) for p in m.group(1).split()}, m.group(2)


def test_kernel_shutdown_leaves_no_process(tmp_path, monkeypatch):
    monkeypatch.setenv("NBDIST_TEST_DIR", str(tmp_path))
    nb = notebook(LEAVE_RUNNING)
    execute_notebook(nb, ROOT, timeout=240)
    pids, job_id = started_pids(nb.cells[2])
    assert len(pids) == 3  # rank, the rank's child, the load
    # execute() shut the kernel down; everything it started must be gone
    left = wait_gone({job_id}, pids, within=15.0)
    assert not left, left


def test_killed_kernel_leaves_no_process(tmp_path, monkeypatch):
    monkeypatch.setenv("NBDIST_TEST_DIR", str(tmp_path))
    nb = notebook(LEAVE_RUNNING)
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                                     resources={"metadata": {"path": ROOT}})
    with client.setup_kernel():
        for i, cell in enumerate(nb.cells):
            client.execute_cell(cell, i)
        pids, job_id = started_pids(nb.cells[2])
        kernel_pid = client.km.provisioner.process.pid
        os.kill(kernel_pid, signal.SIGKILL)  # no atexit, no cleanup: PDEATHSIG and the reaper
        time.sleep(0.2)
        left = wait_gone({job_id}, pids, within=15.0)
    assert not left, left


# -- interrupting the kernel ("interrupt kernel" in Jupyter: SIGINT to the kernel's process group)
# while a cell runs a launch. These drive the kernel message by message (jupyter_client), so that
# a cell can be interrupted while it runs and the next cell can run in the same kernel.

class Cell:
    """What one executed cell sent: its stream and result text, its error, whether it ended."""

    def __init__(self, msg_id: str) -> None:
        self.msg_id = msg_id
        self.text = ""
        self.error: tuple[str, str] | None = None  # (ename, evalue)
        self.done = False


class LiveKernel:
    """A python3 kernel (ipykernel) in ROOT, cells started and followed one message at a time."""

    def __init__(self) -> None:
        from jupyter_client.manager import start_new_kernel

        self.km, self.kc = start_new_kernel(kernel_name="python3", cwd=ROOT, startup_timeout=60)

    def start(self, code: str) -> Cell:
        return Cell(self.kc.execute(code))

    def follow(self, cell: Cell, timeout: float, until=None) -> Cell:
        """Reads the cell's output until it ends (or ``until(cell)`` holds); fails after
        ``timeout`` seconds, showing what the cell printed so far."""
        deadline = time.monotonic() + timeout
        while not cell.done and not (until is not None and until(cell)):
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"the cell did not get there in {timeout} s; its output:\n"
                            f"{cell.text}{cell.error or ''}")
            try:
                msg = self.kc.get_iopub_msg(timeout=min(left, 0.05))
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") != cell.msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                cell.text += content["text"]
            elif kind in ("execute_result", "display_data"):
                cell.text += content["data"].get("text/plain", "")
            elif kind == "error":
                cell.error = (content["ename"], content["evalue"])
            elif kind == "status" and content["execution_state"] == "idle":
                cell.done = True
        return cell

    def run(self, code: str, timeout: float = 60.0) -> Cell:
        """Runs a cell to its end; fails on an error in it."""
        cell = self.follow(self.start(code), timeout)
        assert cell.error is None, f"{cell.error}\n{cell.text}"
        return cell

    def interrupt_and_follow(self, cell: Cell, timeout: float = 15.0) -> float:
        """Interrupts the kernel as Jupyter's button does; returns the seconds until the cell
        ended."""
        t0 = time.monotonic()
        self.km.interrupt_kernel()
        self.follow(cell, timeout)
        return time.monotonic() - t0

    def shutdown(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@pytest.fixture
def kernel():
    k = LiveKernel()
    try:
        yield k
    finally:
        k.shutdown()


# A rank function defined in a cell (fork ranks run it as is, spawn and zygote ranks get it by
# value through cloudpickle). It starts a child of its own (the process-group teardown must reach
# it), records both pids atomically in pid_dir, prints a line, and sleeps, with a line every
# 0.2 s.
SLEEPER_CELL = """
import os, signal, subprocess, sys, time
import nbdist

def sleeper(pid_dir):
    child = subprocess.Popen(['sleep', '600'])
    path = os.path.join(pid_dir, 'rank' + os.environ['RANK'])
    with open(path + '.tmp', 'w') as f:
        f.write(f'{os.getpid()} {child.pid}\\n')
    os.replace(path + '.tmp', path)
    print('rank', os.environ['RANK'], 'asleep', flush=True)
    for i in range(3000):
        time.sleep(0.2)
        print('rank', os.environ['RANK'], 'tick', i, flush=True)

def gloo_sum(x):
    import datetime
    import torch
    import torch.distributed as dist
    dist.init_process_group('gloo', timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank()
    t = torch.tensor([float(rank + x)])
    dist.all_reduce(t)
    dist.destroy_process_group()
    return rank, t.item(), os.getpid()
"""


def rank_pids(pid_dir, nranks: int, within: float = 30.0) -> dict[int, tuple[int, int]]:
    """rank -> (rank pid, its child's pid), once every rank wrote its file."""
    deadline = time.monotonic() + within
    while True:
        found = {}
        for r in range(nranks):
            path = os.path.join(pid_dir, f"rank{r}")
            if os.path.exists(path):
                with open(path) as f:
                    rank_pid, child_pid = (int(p) for p in f.read().split())
                found[r] = (rank_pid, child_pid)
        if len(found) == nranks:
            return found
        assert time.monotonic() < deadline, f"only ranks {sorted(found)} started"
        time.sleep(0.02)


def written_pids(pid_dir) -> set[int]:
    """Every pid in the rank files written so far."""
    pids = set()
    for name in os.listdir(pid_dir):
        if re.fullmatch(r"rank\d+", name):
            with open(os.path.join(pid_dir, name)) as f:
                pids.update(int(p) for p in f.read().split())
    return pids


def live(pids) -> list[int]:
    return [p for p in pids if alive(p)]


def check_next_launch(kernel: LiveKernel, start_method: str, log_dir: str) -> None:
    """The next cell's launch (gloo collectives on a fresh port) works and returns the ranks'
    values; the interrupted job is listed as killed."""
    cell = kernel.run(
        f"res = nbdist.launch(gloo_sum, (1,), nprocs=2, start_method={start_method!r}, "
        f"log_dir={log_dir!r})\n"
        "print('RESULT', [r[:2] for r in res])\n"
        "print('PIDS', [r[2] for r in res] == nbdist.jobs()[-1].pids)\n"
        "print('STATES', [j.status for j in nbdist.jobs()])", timeout=60)
    assert "RESULT [(0, 3.0), (1, 3.0)]" in cell.text, cell.text
    assert "PIDS True" in cell.text, cell.text  # the supervisor follows the right processes
    assert re.search(r"STATES \[.*'killed', 'succeeded'\]", cell.text), cell.text


@pytest.mark.parametrize("start_method", ["fork", "spawn", "zygote"])
def test_interrupting_a_foreground_launch_stops_every_rank(kernel, tmp_path, request,
                                                            start_method):
    pid_dir, log_dir = str(tmp_path), str(tmp_path / "logs")
    kernel.run(SLEEPER_CELL)
    cell = kernel.start(f"nbdist.launch(sleeper, ({pid_dir!r},), nprocs=2, "
                        f"start_method={start_method!r}, log_dir={log_dir!r})")
    pids = rank_pids(pid_dir, 2)
    ranks = {p for p, _ in pids.values()}
    children = {c for _, c in pids.values()}
    request.node.extra_pids = ranks | children
    kernel.follow(cell, 30, until=lambda c: c.text.count("asleep") == 2)
    took = kernel.interrupt_and_follow(cell)
    assert cell.error is not None and cell.error[0] == "KeyboardInterrupt", (cell.error, cell.text)
    assert "nbdist: interrupted; stopping the ranks of job" in cell.text
    # SIGTERM ends these ranks at once: well within the 5 s grace before SIGKILL.
    assert took < 4.0, f"the interrupted cell took {took:.1f} s to end"
    # The ranks are gone when the cell ends; their children (same process group) right after.
    assert not live(ranks), f"ranks still alive after the interrupt: {live(ranks)}"
    left = wait_gone(set(), children, within=2.0)
    assert not left, f"the ranks' children left running: {left}"
    check_next_launch(kernel, start_method, log_dir)


# The interrupt can land while the ranks are being started, between a rank's fork and the moment
# the supervisor knows its pid (fork), or while the kernel waits for the zygote's reply with the
# pid of the rank it just forked (zygote). These hooks hold the kernel in exactly that window
# (once) until the test has interrupted it.
START_WINDOW_HOOKS = {
    "fork": """
_launch_module = sys.modules['nbdist.launch']
_real_fork_batch = _launch_module._fork_batch

def _fork_batch_then_wait(batch):
    pids = _real_fork_batch(batch)  # the ranks run; the supervisor has not heard of them yet
    _launch_module._fork_batch = _real_fork_batch
    with open(MARK + '.tmp', 'w') as f:
        f.write(' '.join(str(p) for p in pids))
    os.replace(MARK + '.tmp', MARK)
    time.sleep(1.0)  # interrupted here
    return pids

_launch_module._fork_batch = _fork_batch_then_wait
""",
    "zygote": """
import nbdist._zygote as _zygote_module
nbdist.launch(len, ([],), nprocs=1, start_method='zygote', stream=False)  # the zygote is warm
_real_recv = _zygote_module.Zygote._recv

def _recv_after_a_wait(self):
    _zygote_module.Zygote._recv = _real_recv
    with open(MARK + '.tmp', 'w') as f:
        f.write(str(self.pid))
    os.replace(MARK + '.tmp', MARK)
    time.sleep(1.0)  # interrupted here: the zygote has forked rank 0, its pid is on the way
    return _real_recv(self)

_zygote_module.Zygote._recv = _recv_after_a_wait
""",
}


def read_mark(path: str, within: float = 30.0) -> list[int]:
    deadline = time.monotonic() + within
    while not os.path.exists(path):
        assert time.monotonic() < deadline, "the launch never reached the hook"
        time.sleep(0.01)
    with open(path) as f:
        return [int(p) for p in f.read().split()]


def live_children(pid: int) -> list[int]:
    import psutil

    try:
        kids = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []
    out = []
    for k in kids:
        try:
            if k.status() != psutil.STATUS_ZOMBIE:
                out.append(k.pid)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.parametrize("start_method", ["fork", "zygote"])
def test_interrupt_while_the_ranks_start_leaves_no_rank_and_no_stale_state(
        kernel, tmp_path, request, start_method):
    mark, pid_dir, log_dir = str(tmp_path / "mark"), str(tmp_path), str(tmp_path / "logs")
    kernel.run(SLEEPER_CELL + f"MARK = {mark!r}\n" + START_WINDOW_HOOKS[start_method], timeout=90)
    cell = kernel.start(f"nbdist.launch(sleeper, ({pid_dir!r},), nprocs=2, "
                        f"start_method={start_method!r}, log_dir={log_dir!r})")
    marked = read_mark(mark)
    took = kernel.interrupt_and_follow(cell)
    assert cell.error is not None and cell.error[0] == "KeyboardInterrupt", (cell.error, cell.text)
    assert took < 5.0, f"the interrupted cell took {took:.1f} s to end"
    if start_method == "fork":
        request.node.extra_pids = set(marked) | written_pids(pid_dir)
        # Forked before the interrupt: they must be stopped with the job, not left running.
        assert not live(marked), f"ranks left running after the interrupt: {live(marked)}"
    else:
        (zygote_pid,) = marked
        deadline = time.monotonic() + 3.0
        while live_children(zygote_pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        # Rank 0 was forked by the zygote before the interrupt: it must not run on unsupervised.
        left = live_children(zygote_pid)
        request.node.extra_pids = set(left) | written_pids(pid_dir)
        assert not left, f"ranks of the zygote left running after the interrupt: {left}"
    # whatever the ranks had started (their `sleep` children) went with them
    left = wait_gone(set(), written_pids(pid_dir), within=2.0)
    assert not left, f"processes of the interrupted ranks left running: {left}"
    # ... and the next launch gets its own ranks' pids (not the lost reply of the interrupted one)
    check_next_launch(kernel, start_method, log_dir)


# nbdist.ddp.train() with Gloo on CPU: a small MLP, a checkpoint (~1.6 MB, fsync'd) after every
# step, for a million steps.
TRAINER_CELL = """
import os
import torch  # as a notebook would have: the fork ranks start with it imported
import nbdist

def trainer(pid_dir, ckpt_dir, max_steps):
    import datetime
    import torch
    import torch.distributed as dist
    from nbdist.ddp import TrainConfig, train
    dist.init_process_group('gloo', timeout=datetime.timedelta(seconds=60))
    path = os.path.join(pid_dir, 'rank' + os.environ['RANK'])
    with open(path + '.tmp', 'w') as f:
        f.write(f'{os.getpid()} {os.getpid()}\\n')
    os.replace(path + '.tmp', path)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 1024), torch.nn.ReLU(),
                                torch.nn.Linear(1024, 64))
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 64, generator=g), torch.randn(8, 64, generator=g))
               for _ in range(4)]
    cfg = TrainConfig(max_steps=max_steps, lr=1e-3, precision='fp32', ckpt_dir=ckpt_dir,
                      ckpt_every=1, log_every=1, seed=0)
    history = train(model, batches, cfg,
                    loss_fn=lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1]))
    return [h['step'] for h in history]
"""


def files_open_under(pid: int, directory: str) -> list[str]:
    """The files under ``directory`` that process ``pid`` has open."""
    found = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(directory + os.sep):
            found.append(target)
    return found


def stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[0] in (b"T", b"t")


def freeze_in_a_checkpoint_write(ranks, ckpt_dir: str, within: float = 20.0) -> tuple[int, list]:
    """SIGSTOPs a rank while it has a file under ``ckpt_dir`` open, i.e. while it writes a
    checkpoint (whatever the writer's file names), so that the interrupt that follows lands in
    the middle of a checkpoint write for sure rather than by chance. Returns (pid, the files).

    (A signal never cuts a single write() to a regular file short, so the rank is caught in the
    checkpoint write at large: between opening the file and closing it, which includes the
    write itself and the fsync after it.)"""
    deadline = time.monotonic() + within
    tries = 0
    while time.monotonic() < deadline:
        for pid in ranks:
            if not files_open_under(pid, ckpt_dir):
                continue
            tries += 1
            os.kill(pid, signal.SIGSTOP)
            while not stopped(pid):
                time.sleep(0.0005)
            files = files_open_under(pid, ckpt_dir)
            if files:
                return pid, files  # frozen mid-write
            os.kill(pid, signal.SIGCONT)  # the write ended first: try the next one
        time.sleep(0.0005)
    pytest.fail(f"no rank was caught writing a checkpoint in {within} s ({tries} tries)")


def signal_pending(pid: int, signum: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        masks = dict(line.split(":", 1) for line in f if line.startswith(("SigPnd", "ShdPnd")))
    return any(int(m, 16) >> (signum - 1) & 1 for m in masks.values())


def test_interrupting_ddp_training_keeps_a_loadable_checkpoint(kernel, tmp_path, request):
    pytest.importorskip("torch")
    from nbdist.ddp import load_checkpoint

    pid_dir, ckpt, log_dir = str(tmp_path), str(tmp_path / "ckpt"), str(tmp_path / "logs")
    latest = os.path.join(ckpt, "latest.pt")
    kernel.run(TRAINER_CELL)
    cell = kernel.start(f"nbdist.launch(trainer, ({pid_dir!r}, {ckpt!r}, 1_000_000), nprocs=2, "
                        f"log_dir={log_dir!r})")
    ranks = {p for p, _ in rank_pids(pid_dir, 2).values()}
    request.node.extra_pids = ranks

    def logged_steps(c) -> list[int]:
        return [int(s) for s in re.findall(r"\[rank 0\] step +(\d+)/1000000", c.text)]

    kernel.follow(cell, 30, until=lambda c: len(logged_steps(c)) >= 5 and os.path.exists(latest))
    # Interrupted in the middle of writing a checkpoint: the writer is frozen there until the
    # teardown's SIGTERM is pending, then let go, so that SIGTERM ends it before it writes on.
    writer, files = freeze_in_a_checkpoint_write(ranks, ckpt)
    t0 = time.monotonic()
    kernel.km.interrupt_kernel()
    while not signal_pending(writer, signal.SIGTERM):
        assert time.monotonic() - t0 < 4.0, "the interrupt sent no SIGTERM to the ranks"
        time.sleep(0.005)
    os.kill(writer, signal.SIGCONT)
    kernel.follow(cell, 15)
    took = time.monotonic() - t0
    assert cell.error is not None and cell.error[0] == "KeyboardInterrupt", (cell.error, cell.text)
    assert took < 4.0, f"the interrupted cell took {took:.1f} s to end"
    assert not live(ranks), f"ranks still alive after the interrupt: {live(ranks)}"
    # The checkpoint in place is a complete one, of a step the run had reached: the torn write
    # may leave its temporary file, never a torn latest.pt.
    saved = load_checkpoint(latest)
    assert saved is not None, os.listdir(ckpt)
    step = int(saved["step"])
    assert 1 <= step <= max(logged_steps(cell)), (step, logged_steps(cell))
    # The next cell trains on from it, three more steps, in the same kernel.
    more = kernel.run(f"print('STEPS', nbdist.launch(trainer, ({pid_dir!r}, {ckpt!r}, "
                      f"{step + 3}), nprocs=2, log_dir={log_dir!r}))", timeout=60)
    expect = [step + 1, step + 2, step + 3]
    assert f"STEPS {[expect, expect]}" in more.text, more.text
    assert int(load_checkpoint(latest)["step"]) == step + 3
    assert os.listdir(ckpt) == ["latest.pt"], files  # the torn write's leftovers are gone


def ticks(text: str) -> list[int]:
    return [int(t) for t in re.findall(r"\[rank 0\] rank 0 tick (\d+)", text)]


# A background job is not the cell's: interrupting the kernel (during another cell, or while
# job.stream() shows its output) leaves it running; job.kill() stops it.
def test_interrupts_leave_a_background_job_running_until_killed(kernel, tmp_path, request):
    pid_dir, log_dir = str(tmp_path), str(tmp_path / "logs")
    kernel.run(SLEEPER_CELL)
    kernel.run(f"job = nbdist.launch(sleeper, ({pid_dir!r},), nprocs=2, background=True, "
               f"log_dir={log_dir!r})")
    pids = rank_pids(pid_dir, 2)
    everything = {p for pair in pids.values() for p in pair}
    request.node.extra_pids = everything

    # 1. an unrelated cell
    cell = kernel.start("print('napping', flush=True)\ntime.sleep(60)")
    kernel.follow(cell, 30, until=lambda c: "napping" in c.text)
    took = kernel.interrupt_and_follow(cell)
    assert cell.error is not None and cell.error[0] == "KeyboardInterrupt", (cell.error, cell.text)
    assert took < 3.0, f"the interrupted cell took {took:.1f} s to end"
    assert set(live(everything)) == everything
    assert "STATUS running" in kernel.run("print('STATUS', job.status)").text

    # 2. job.stream(): the interrupt detaches, the cell ends normally, the job runs on
    cell = kernel.start("print('STREAM', job.stream())")
    kernel.follow(cell, 30, until=lambda c: "[rank 0] rank 0 asleep" in c.text
                  and "[rank 1] rank 1 asleep" in c.text)
    took = kernel.interrupt_and_follow(cell)
    assert cell.error is None, (cell.error, cell.text)
    assert took < 3.0, f"the interrupted cell took {took:.1f} s to end"
    assert "detached from job" in cell.text and "STREAM running" in cell.text, cell.text
    assert set(live(everything)) == everything
    shown = ticks(cell.text)
    # attaching again goes on where it stopped (nothing shown twice) and detaches again
    cell = kernel.start("print('STREAM', job.stream())")
    # both ranks still run: their new lines arrive
    kernel.follow(cell, 30, until=lambda c: "[rank 0] rank 0 tick" in c.text
                  and "[rank 1] rank 1 tick" in c.text)
    took = kernel.interrupt_and_follow(cell)
    assert cell.error is None and took < 3.0, (cell.error, took, cell.text)
    assert "asleep" not in cell.text and "STREAM running" in cell.text, cell.text
    assert min(ticks(cell.text)) > max(shown, default=-1), (shown, cell.text)
    assert set(live(everything)) == everything

    # 3. job.kill() stops it: ranks and their children
    t0 = time.monotonic()
    done = kernel.run("job.kill(grace=2.0)\nprint('STATUS', job.status)", timeout=30)
    assert "STATUS killed" in done.text, done.text
    assert time.monotonic() - t0 < 4.0
    left = wait_gone(set(), everything, within=2.0)
    assert not left, f"processes of the killed job left running: {left}"
