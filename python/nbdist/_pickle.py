"""cloudpickle, plus modules that replaced themselves in sys.modules with a ModuleType subclass.

torch does that (torch.backends.cudnn is a ``CudnnModule``, others a ``GenericModule``); cloudpickle
only recognises plain ``ModuleType`` objects as importable and fails on those ("cannot pickle
'CudnnModule' object") as soon as a notebook function that refers to one is sent to a rank by
value. Any module object that is the one sys.modules holds under its name travels by name.
"""

from __future__ import annotations

import importlib
import io
import sys
import types

import cloudpickle


class _Pickler(cloudpickle.Pickler):
    def reducer_override(self, obj):
        if isinstance(obj, types.ModuleType) and type(obj) is not types.ModuleType:
            name = getattr(obj, "__name__", None)
            if isinstance(name, str) and sys.modules.get(name) is obj:
                return importlib.import_module, (name,)
        return super().reducer_override(obj)


def dumps(obj) -> bytes:
    """cloudpickle.dumps(obj) that also sends module-subclass objects by name."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=cloudpickle.DEFAULT_PROTOCOL).dump(obj)
    return buf.getvalue()
