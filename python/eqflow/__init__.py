"""eqflow: equivariant flow matching with EGNN or kernel-dynamics vector fields, as Boltzmann
generators.

The Python face of the C++ library (docs/design.md; README "Python"). Arrays in and out are NumPy
arrays or torch tensors; a function given a torch tensor returns torch tensors on its device.

    model = eqflow.load_model("run/model.safetensors")   # model.field_type: 'egnn' | 'kernel'
    v = model.field(x, t)              # x [B, n, d] or [B, n*d]; t a number or [B]
    div = model.divergence(x, t)       # exact, [B]
    u = eqflow.energy("dw4", x)        # reduced energies [B]
    perm = eqflow.assign(cost)         # [P, n, n] -> [P, n]
    eqflow.torch.Field(model)          # torch.nn.Module, forward(t, x), autograd through eqflow

Errors from the library are raised as eqflow.Error (a ValueError) with the library's message.
"""
import os as _os

# The alanine dipeptide files travel inside the package; the library looks for them where
# EQFLOW_DATA_DIR points unless the caller has set it.
_data = _os.path.join(_os.path.dirname(__file__), "data")
if _os.path.isfile(_os.path.join(_data, "aldp", "aldp.pdb")):
    _os.environ.setdefault("EQFLOW_DATA_DIR", _data)

from . import _eqflow  # noqa: E402
from ._eqflow import Error, System, cuda_available, cuda_compiled, cuda_status  # noqa: E402
from ._api import (  # noqa: E402
    Model,
    assign,
    couple,
    data,
    energy,
    energy_forces,
    evaluate,
    forces,
    load_model,
    log_likelihood,
    make_model,
    sample,
    system,
    systems,
    train,
)

__version__ = _eqflow.__version__
Error.__module__ = "eqflow"


def __getattr__(name):
    # eqflow.torch imports torch, so only on first use.
    if name == "torch":
        import importlib

        return importlib.import_module(".torch", __name__)
    raise AttributeError(f"module 'eqflow' has no attribute {name!r}")


__all__ = [
    "Error",
    "Model",
    "System",
    "__version__",
    "assign",
    "couple",
    "cuda_available",
    "cuda_compiled",
    "cuda_status",
    "data",
    "energy",
    "energy_forces",
    "evaluate",
    "forces",
    "load_model",
    "log_likelihood",
    "make_model",
    "sample",
    "system",
    "systems",
    "train",
]
