"""Helpers shared by several test directories (imported as ``support``: tests/ is on sys.path
because tests/conftest.py lives there).

- finding processes of our jobs that outlived them (the no-leftover-process check);
- executing a notebook in a real Jupyter kernel and reading its cells' text.
"""

from __future__ import annotations

import os
import time


def processes_with_job_ids(job_ids: set[str]) -> list[tuple[int, str]]:
    """(pid, job id) of every live process whose environment names one of the jobs (ranks, their
    children and background loads all carry NBDIST_JOB_ID)."""
    found = []
    needles = {f"NBDIST_JOB_ID={j}".encode(): j for j in job_ids}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state == b"Z":
            continue
        for needle, job in needles.items():
            if needle in env:
                found.append((int(name), job))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def leftovers(job_ids: set[str], pids: set[int]) -> list:
    return processes_with_job_ids(job_ids) + [(p, "pid") for p in pids if alive(p)]


def wait_gone(job_ids: set[str], pids: set[int], within: float) -> list:
    deadline = time.monotonic() + within
    while True:
        left = leftovers(job_ids, pids)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


# -- notebooks ------------------------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def execute_notebook(nb, cwd: str = ROOT, timeout: int = 300):
    """Executes ``nb`` in a fresh python3 kernel started in ``cwd``; returns ``nb`` (outputs
    filled in). ``timeout``: seconds per cell."""
    import nbclient

    nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": cwd}}).execute()
    return nb


def run_notebook_file(path: str, timeout: int = 300):
    """Reads the notebook at ``path`` and executes it in its own directory; returns it."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    return execute_notebook(nb, os.path.dirname(path), timeout)


def code_output(nb) -> str:
    """What every code cell of an executed notebook printed or displayed, cell after cell."""
    return "\n".join(cell_text(c) for c in nb.cells if c.cell_type == "code")


def cell_text(cell, results: bool = True, errors: bool = False) -> str:
    """A cell's stream output, plus (``results``) the text/plain of its results and displays,
    plus (``errors``) ``ename: evalue`` of an error it raised."""
    parts = []
    for o in cell.outputs:
        if o["output_type"] == "stream":
            parts.append(o["text"])
        elif results and o["output_type"] in ("execute_result", "display_data"):
            parts.append(o["data"].get("text/plain", ""))
        elif errors and o["output_type"] == "error":
            parts.append(f"{o['ename']}: {o['evalue']}")
    return "".join(parts)
