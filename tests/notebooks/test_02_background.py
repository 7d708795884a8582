"""notebooks/02_background_jobs.ipynb, executed end to end at tiny size in a real kernel: two
background training jobs through %%nbdist, stream(), wait_all, background inference, results."""

from __future__ import annotations

import os
import re

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def text_of(cell) -> str:
    parts = []
    for o in cell.outputs:
        if o["output_type"] == "stream":
            parts.append(o["text"])
        elif o["output_type"] in ("execute_result", "display_data"):
            parts.append(o["data"].get("text/plain", ""))
    return "".join(parts)


def test_notebook_02_background_jobs_executes(monkeypatch):
    monkeypatch.setenv("NBDIST_NB_SIZE", "tiny")
    path = os.path.join(ROOT, "notebooks", "02_background_jobs.ipynb")
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": os.path.dirname(path)}}).execute()
    out = "\n".join(text_of(c) for c in nb.cells if c.cell_type == "code")
    assert "started in the background (1 rank); train_proc0.wait() waits for it" in out
    assert "[rank 0] model 1 step 0 loss" in out  # stream() printed the job's lines
    finals = re.findall(r"model (\d): final loss ([\d.]+)", out)
    assert [m for m, _ in finals] == ["0", "1"] and all(float(v) < 0.05 for _, v in finals)
    assert "['succeeded', 'succeeded']" in out
    mse = dict(re.findall(r"(ensemble|model 0|model 1): test MSE ([\d.]+)", out))
    assert float(mse["ensemble"]) < 0.1
    assert "submission written: 64 predictions" in out
