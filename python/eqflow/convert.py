"""Converts an EGNN checkpoint of the reference PyTorch code to an eqflow model file.

    python -m eqflow.convert checkpoint.pt model.safetensors --system dw4

The reference code keeps the network as a submodule named `egnn` (state_dict names such as
`_dynamics.egnn.gcl_0.edge_mlp.0.weight`), inside a torch pickle that may also hold the
optimiser, the epoch and so on. The converter finds the tensors under the `egnn.` prefix, strips
it, infers hidden size, layers, attention and the number of atom types from the shapes, takes the
particle count and dimension (and atom types) from the system, and writes the model with the
library's own writer, after the library's reader has checked every name and shape.

Not in the weights, so given as options when they differ from the defaults: tanh (default on),
coords_range (default 15 / layers), length_scale (default 1).
"""
import argparse
import re
import sys

import numpy as np

from . import _api, _eqflow
from ._eqflow import Error

_PREFIX = re.compile(r"(?:^|\.)egnn\.")


def _load_pickle(path, trusted):
    try:
        import torch
    except ImportError:
        raise Error("reading a PyTorch checkpoint needs torch (pip install torch)") from None
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except TypeError:  # a torch without weights_only
        if not trusted:
            raise Error(f"{path}: this torch cannot load checkpoints safely (no weights_only); "
                        "pass trusted=True (--trusted) if you trust the file") from None
    except Exception as e:
        if not trusted:
            raise Error(f"{path}: not a plain checkpoint of tensors ({e}); pass trusted=True "
                        "(--trusted) to unpickle arbitrary objects if you trust the file") from None
    return torch.load(str(path), map_location="cpu")


def _tensors(obj, prefix=""):
    """Every tensor in a nested structure of dicts (state_dicts, checkpoints), by dotted name."""
    import torch

    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif hasattr(obj, "state_dict") and callable(obj.state_dict):  # a whole module
        yield from _tensors(obj.state_dict(), prefix)


def egnn_tensors(checkpoint, prefix=None):
    """{name: array} of the EGNN in a loaded checkpoint, with the `...egnn.` prefix removed.
    prefix: the full prefix to strip (e.g. "model._dynamics.egnn.") when several networks are
    stored (a model and its EMA copy)."""
    found = {}
    for name, tensor in _tensors(checkpoint):
        if prefix is not None:
            if not name.startswith(prefix):
                continue
            head, rest = prefix, name[len(prefix):]
        else:
            m = _PREFIX.search(name)
            if not m:
                continue
            head, rest = name[:m.end()], name[m.end():]
        found.setdefault(head, {})[rest] = tensor.detach().to("cpu").double().numpy()
    if not found:
        where = f"under the prefix {prefix!r}" if prefix else "under an `egnn.` prefix"
        raise Error(f"no EGNN tensors {where} in the checkpoint")
    if len(found) > 1:
        raise Error("several EGNNs in the checkpoint (prefixes " +
                    ", ".join(repr(p) for p in sorted(found)) + "); choose one with prefix=")
    return next(iter(found.values()))


def convert_reference_checkpoint(checkpoint, out=None, *, system=None, n_particles=None,
                                 dim=None, atom_types=None, tanh=True, coords_range=0.0,
                                 length_scale=1.0, prefix=None, dtype="f64", trusted=False):
    """Reads a reference checkpoint (a path, or an already loaded object) and returns the
    eqflow.Model; writes it to `out` when given. n_particles, dim and atom_types default to the
    system's (system: "dw4", "lj13", "lj55", "aldp", ...)."""
    obj = _load_pickle(checkpoint, trusted) if isinstance(checkpoint, (str, bytes)) or hasattr(
        checkpoint, "__fspath__") else checkpoint
    tensors = egnn_tensors(obj, prefix)
    if "embedding.weight" not in tensors:
        raise Error("the checkpoint's EGNN has no embedding.weight (found: " +
                    ", ".join(sorted(tensors)[:8]) + ", ...)")
    hidden, in_features = tensors["embedding.weight"].shape
    layer_ids = {int(m.group(1)) for k in tensors for m in [re.match(r"gcl_(\d+)\.", k)] if m}
    layers = max(layer_ids) + 1 if layer_ids else 0
    attention = any(".att_mlp." in k for k in tensors)
    num_types = in_features - 1

    sys_ = _api.system(system) if system is not None else None
    n = n_particles if n_particles is not None else (sys_.n if sys_ else None)
    d = dim if dim is not None else (sys_.d if sys_ else None)
    if n is None or d is None:
        raise Error("the particle count and dimension are not in the weights: give system= "
                    "(or n_particles= and dim=)")
    types = list(atom_types) if atom_types is not None else (
        list(sys_.atom_types) if sys_ and num_types > 0 else [])
    if num_types > 0 and (not types or max(types) + 1 != num_types):
        raise Error(f"the embedding takes {in_features} features ({num_types} atom types + t); "
                    f"give atom_types= with {num_types} types (the system has "
                    f"{(max(types) + 1) if types else 0})")
    if num_types == 0:
        types = []
    like = _api.make_model(n, d, system=sys_.name if sys_ else "", hidden=hidden, layers=layers,
                           attention=attention, tanh=tanh, coords_range=coords_range,
                           atom_types=types, length_scale=length_scale)
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    model = _api.Model(_eqflow.model_from_tensors(like._m, arrays, str(checkpoint)
                                                  if not isinstance(checkpoint, dict)
                                                  else "checkpoint"))
    if out is not None:
        model.save(out, dtype)
    return model


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m eqflow.convert", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="the reference code's checkpoint (torch pickle)")
    p.add_argument("out", help="the eqflow model file to write (.safetensors)")
    p.add_argument("--system", help="dw4, lj13, lj55, aldp, lj:N (particle count, dimension, "
                   "atom types)")
    p.add_argument("--n-particles", type=int)
    p.add_argument("--dim", type=int)
    p.add_argument("--no-tanh", action="store_true", help="the network was built with tanh=False")
    p.add_argument("--coords-range", type=float, default=0.0,
                   help="the per-layer coordinate range (default 15 / layers)")
    p.add_argument("--length-scale", type=float, default=1.0)
    p.add_argument("--prefix", help="the full prefix to strip, e.g. 'model._dynamics.egnn.'")
    p.add_argument("--dtype", default="f64", choices=["f64", "f32"])
    p.add_argument("--trusted", action="store_true",
                   help="unpickle arbitrary objects (only for files you trust)")
    a = p.parse_args(argv)
    try:
        m = convert_reference_checkpoint(a.checkpoint, a.out, system=a.system,
                                         n_particles=a.n_particles, dim=a.dim, tanh=not a.no_tanh,
                                         coords_range=a.coords_range,
                                         length_scale=a.length_scale, prefix=a.prefix,
                                         dtype=a.dtype, trusted=a.trusted)
    except Error as e:
        sys.stderr.write(f"eqflow.convert: {e}\n")
        return 1
    print(f"wrote {a.out}: {m!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
