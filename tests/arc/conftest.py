import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARC_DATA = ROOT.parent / "shared" / "arc"
if not ARC_DATA.is_dir():
    ARC_DATA = Path("/work/shared/arc")


def _load_reference():
    spec = importlib.util.spec_from_file_location("arc_reference", Path(__file__).with_name(
        "reference.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["arc_reference"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def ref():
    return _load_reference()


@pytest.fixture(scope="session")
def arc_data():
    if not ARC_DATA.is_dir():
        pytest.skip("ARC data (../shared/arc) not present")
    return ARC_DATA
