"""notebooks/02_background_jobs.ipynb, executed end to end at tiny size in a real kernel: two
background training jobs through %%nbdist, stream(), wait_all, background inference, results."""

from __future__ import annotations

import os
import re

import pytest
from support import ROOT, code_output, run_notebook_file

pytest.importorskip("nbformat")
pytest.importorskip("nbclient")


def test_notebook_02_background_jobs_executes(monkeypatch):
    monkeypatch.setenv("NBDIST_NB_SIZE", "tiny")
    path = os.path.join(ROOT, "notebooks", "02_background_jobs.ipynb")
    out = code_output(run_notebook_file(path))
    assert "started in the background (1 rank); train_proc0.wait() waits for it" in out
    assert "[rank 0] model 1 step 0 loss" in out  # stream() printed the job's lines
    finals = re.findall(r"model (\d): final loss ([\d.]+)", out)
    assert [m for m, _ in finals] == ["0", "1"] and all(float(v) < 0.05 for _, v in finals)
    assert "['succeeded', 'succeeded']" in out
    mse = dict(re.findall(r"(ensemble|model 0|model 1): test MSE ([\d.]+)", out))
    assert float(mse["ensemble"]) < 0.1
    assert "submission written: 64 predictions" in out
