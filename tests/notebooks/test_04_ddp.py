"""Executes notebooks/04_ddp_gpt.ipynb at a tiny size (2 CPU ranks without a GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import code_output, execute_notebook

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "04_ddp_gpt.ipynb"


@pytest.mark.slow
def test_04_ddp_notebook_runs(monkeypatch, tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("NBDIST_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    outputs = code_output(execute_notebook(nb, str(tmp_path), timeout=240))
    assert "resumed at step 7, now at step 10" in outputs
    assert "step     2/6 | loss" in outputs  # rank 0's log lines reach the cell
