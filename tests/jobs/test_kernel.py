"""In a real Jupyter kernel (nbclient): the %%nbdist magic (background in one cell, wait in a
later one; foreground; bad arguments; %nbdist_jobs; %nbdist_kill), and no process left behind
when the kernel shuts down or is killed."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
from support import ROOT, cell_text, execute_notebook, wait_gone

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
