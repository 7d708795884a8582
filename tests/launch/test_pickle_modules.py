"""Functions that refer to torch's self-replacing modules (torch.backends.cudnn is a ModuleType
subclass) reach fresh-interpreter ranks: plain cloudpickle fails on them."""

import pytest

import nbdist

torch = pytest.importorskip("torch")
cudnn = torch.backends.cudnn


def uses_cudnn_module() -> str:
    return type(cudnn).__name__ + ":" + str(cudnn.is_available() in (True, False))


def test_module_subclass_objects_travel_by_name():
    import cloudpickle

    assert type(cudnn).__name__ == "CudnnModule"
    cloudpickle.register_pickle_by_value(__import__(__name__))
    try:
        assert nbdist.launch(uses_cudnn_module, nprocs=1, start_method="spawn",
                             stream=False) == ["CudnnModule:True"]
    finally:
        cloudpickle.unregister_pickle_by_value(__import__(__name__))
