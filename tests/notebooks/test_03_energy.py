"""notebooks/03_foreground_background_energy.ipynb, executed end to end at tiny size in a real
kernel: foreground training beside a restarting background load, the record, the energy (or why
there is none)."""

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


def test_notebook_03_energy_executes(monkeypatch):
    monkeypatch.setenv("NBDIST_NB_SIZE", "tiny")
    path = os.path.join(ROOT, "notebooks", "03_foreground_background_energy.ipynb")
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": os.path.dirname(path)}}).execute()
    out = "\n".join(text_of(c) for c in nb.cells if c.cell_type == "code")
    assert re.search(r"training: loss [\d.]+ in [\d.]+ s on (cpu|cuda)", out)
    m = re.search(r"load: (\d+) run\(s\), (\d+) restart\(s\)", out)
    assert m and int(m.group(2)) == int(m.group(1)) - 1
    assert re.search(r"energy \(combined\): (\d+ J|none - .+)", out)
    assert "succeeded ['bg', " in out and "'record.json'" in out and "run_0.log" in out
    assert "alone:" in out and "alone energy:" in out
