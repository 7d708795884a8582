"""Notebook 05 (ARC decoder) runs top to bottom in a real kernel and writes a valid submission."""

import json
from pathlib import Path

import pytest
from support import code_output, execute_notebook

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "05_arc_decoder.ipynb"


def test_notebook_05_executes_and_writes_a_valid_submission(tmp_path):
    from nbdist.arc import ArcDataset

    nb = nbformat.read(NOTEBOOK, as_version=4)
    out = code_output(execute_notebook(nb, str(tmp_path), timeout=120))
    assert "score_full_probmul_3" in out and "submission.json: score" in out
    sub = json.loads((tmp_path / "submission.json").read_text())
    ds = ArcDataset.bundled_evaluation()
    score = ds.validate_submission(sub)
    assert 0 < score.score <= score.n_tasks == 400
    assert not list(tmp_path.glob(".submission.json.*"))  # no temporary file left behind
