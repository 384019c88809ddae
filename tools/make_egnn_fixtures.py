"""Regenerates the EGNN fixtures under tests/data/ with the independent PyTorch module in
tools/egnn_torch.py:

    python3 tools/make_egnn_fixtures.py [tests/data]

For each case NAME it writes
    egnn_NAME.safetensors   weights + eqflow.* metadata, written here by hand (struct + json,
                            no checksum), so the test also proves that a file from another
                            safetensors writer loads
    egnn_NAME_x.npy         inputs [B, n*d] float64 (centred)
    egnn_NAME_t.npy         times [B] float64
    egnn_NAME_v.npy         v(x, t) [B, n*d] float64
    egnn_NAME_div.npy       exact divergence [B] float64 (autograd, one output at a time)
All arithmetic is float64 (the weights of the F32 case are rounded to float32 first and then
evaluated in float64, as eqflow does after loading them).
"""
import json
import os
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from egnn_torch import EGNN, divergence  # noqa: E402

CASES = [
    # name, n, d, hidden, layers, attention, tanh, atom_types, weight dtype, batch
    ("dw4", 4, 2, 8, 2, True, True, None, "F64", 3),
    ("typed", 5, 3, 6, 3, False, False, [0, 1, 0, 2, 1], "F64", 3),
    ("lj13", 13, 3, 32, 3, True, True, None, "F32", 2),
]


def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name, array, dtype in tensors:
        raw = np.ascontiguousarray(array, dtype="<f8" if dtype == "F64" else "<f4").tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)


def make_case(out_dir, seed, name, n, d, hidden, layers, attention, tanh, types, wdtype, batch):
    torch.manual_seed(seed)
    model = EGNN(n, d, hidden=hidden, layers=layers, attention=attention, tanh=tanh,
                 atom_types=types).double()
    with torch.no_grad():
        for l in range(layers):
            # The default gain 0.001 leaves the coordinate update almost linear; larger weights
            # make the fixture exercise every nonlinearity.
            w = getattr(model, f"gcl_{l}").coord_mlp[2].weight
            w.uniform_(-0.5, 0.5)
        if wdtype == "F32":
            for p in model.parameters():
                p.copy_(p.float().double())
    x = torch.randn(batch, n, d, dtype=torch.float64) * 1.2
    x = x - x.mean(dim=1, keepdim=True)
    t = torch.rand(batch, dtype=torch.float64)
    v, div = divergence(model, x, t)

    metadata = {
        "eqflow.system": f"fixture_{name}",
        "eqflow.n_particles": str(n),
        "eqflow.dim": str(d),
        "eqflow.hidden": str(hidden),
        "eqflow.layers": str(layers),
        "eqflow.attention": "true" if attention else "false",
        "eqflow.tanh": "true" if tanh else "false",
        "eqflow.coords_range": repr(model.coords_range),
    }
    if types:
        metadata["eqflow.atom_types"] = ",".join(str(k) for k in types)
    tensors = [(k, p.detach().numpy(), wdtype) for k, p in model.state_dict().items()]
    prefix = os.path.join(out_dir, f"egnn_{name}")
    write_safetensors(prefix + ".safetensors", tensors, metadata)
    np.save(prefix + "_x.npy", x.reshape(batch, n * d).numpy())
    np.save(prefix + "_t.npy", t.numpy())
    np.save(prefix + "_v.npy", v.reshape(batch, n * d).numpy())
    np.save(prefix + "_div.npy", div.numpy())
    count = sum(p.numel() for p in model.parameters())
    print(f"{name}: {count} parameters, v[0,:3] = {v.reshape(batch, -1)[0, :3].tolist()}, "
          f"div = {div.tolist()}")


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")
    for k, case in enumerate(CASES):
        make_case(out_dir, 1000 + k, *case)


if __name__ == "__main__":
    main()
