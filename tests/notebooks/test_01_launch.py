"""nbdist.launch inside a real Jupyter kernel (nbclient): cell-defined functions and lambdas with
every start method, before and after the kernel imported torch and ran tensor code; and the
01_launch notebook, executed end to end."""

from __future__ import annotations

import os

import pytest
from support import ROOT, cell_text, execute_notebook, run_notebook_file

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

CELLS = [
    "import os, nbdist",
    "def times_rank(x):\n    return int(os.environ['RANK']) * x\n"
    "plus_rank = lambda x: x + int(os.environ['RANK'])",
    # run 3 times: before torch, after importing torch, after tensor code
    """
for method in ["fork", "spawn", "zygote", "auto"]:
    got = nbdist.launch(times_rank, (10,), nprocs=2, start_method=method, stream=False)
    assert got == [0, 10], (method, got)
    got = nbdist.launch(plus_rank, (5,), nprocs=2, start_method=method, stream=False)
    assert got == [5, 6], (method, got)
print("all methods ok")
""",
    "def talk():\n    print('hello from rank', os.environ['RANK'])\n"
    "nbdist.launch(talk, nprocs=2, start_method='fork')",
    "import torch\nx = torch.randn(128, 128)\ny = (x @ x).sum().item()\nprint(type(y).__name__)",
]


def run_cells(cells, timeout=300):
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(c) for c in cells],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}},
    )
    return execute_notebook(nb, ROOT, timeout)


def text_of(cell) -> str:
    return cell_text(cell, results=False)


def test_cell_functions_and_lambdas_with_every_start_method_before_and_after_torch():
    run = CELLS[2]
    nb = run_cells([CELLS[0], CELLS[1], run, CELLS[3], CELLS[4], run])
    assert "all methods ok" in text_of(nb.cells[2])
    talk = text_of(nb.cells[3])
    assert "[rank 0] hello from rank 0" in talk and "[rank 1] hello from rank 1" in talk
    assert "float" in text_of(nb.cells[4])
    assert "all methods ok" in text_of(nb.cells[5])


def test_notebook_01_launch_executes():
    path = os.path.join(ROOT, "notebooks", "01_launch.ipynb")
    nb = run_notebook_file(path)
    outputs = "\n".join(text_of(c) for c in nb.cells if c.cell_type == "code")
    assert "root cause: rank 1 ValueError - bad batch on rank 1" in outputs
    assert "[rank 1] rank 1/" in outputs
