"""Executes notebooks/04_ddp_gpt.ipynb at a tiny size (2 CPU ranks without a GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "04_ddp_gpt.ipynb"


@pytest.mark.slow
def test_04_ddp_notebook_runs(monkeypatch, tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("NBDIST_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.get("outputs", []))
    assert "resumed at step 7, now at step 10" in outputs
    assert "step     2/6 | loss" in outputs  # rank 0's log lines reach the cell
