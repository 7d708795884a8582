"""nbdist.launch inside a real Jupyter kernel (nbclient): cell-defined functions and lambdas with
every start method, before and after the kernel imported torch and ran tensor code; and the
01_launch notebook, executed end to end."""

from __future__ import annotations

import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": ROOT}})
    client.execute()
    return nb


def text_of(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")


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
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": os.path.dirname(path)}})
    client.execute()
    outputs = "\n".join(text_of(c) for c in nb.cells if c.cell_type == "code")
    assert "root cause: rank 1 ValueError - bad batch on rank 1" in outputs
    assert "[rank 1] rank 1/" in outputs
