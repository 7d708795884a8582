"""notebooks/03_foreground_background_energy.ipynb, executed end to end at tiny size in a real
kernel: foreground training beside a restarting background load, the record, the energy (or why
there is none)."""

from __future__ import annotations

import os
import re

import pytest
from support import ROOT, code_output, run_notebook_file

pytest.importorskip("nbformat")
pytest.importorskip("nbclient")


def test_notebook_03_energy_executes(monkeypatch):
    monkeypatch.setenv("NBDIST_NB_SIZE", "tiny")
    path = os.path.join(ROOT, "notebooks", "03_foreground_background_energy.ipynb")
    out = code_output(run_notebook_file(path))
    assert re.search(r"training: loss [\d.]+ in [\d.]+ s on (cpu|cuda)", out)
    m = re.search(r"load: (\d+) run\(s\), (\d+) restart\(s\)", out)
    assert m and int(m.group(2)) == int(m.group(1)) - 1
    assert re.search(r"energy \(combined\): (\d+ J|none - .+)", out)
    assert "succeeded ['bg', " in out and "'record.json'" in out and "run_0.log" in out
    assert "alone:" in out and "alone energy:" in out
