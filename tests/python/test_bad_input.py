"""Bad input raises a Python exception with the library's message; the interpreter survives."""
import os
import subprocess
import sys

import numpy as np
import pytest

import eqflow
from conftest import centred


def test_wrong_shape(dw4_model):
    with pytest.raises(eqflow.Error, match=r"x has shape \[2, 7\], expected \[B, 4, 2\] or \[B, 8\]"):
        dw4_model.field(np.zeros((2, 7)), 0.5)
    with pytest.raises(eqflow.Error, match=r"x has shape \[2, 3, 2\]"):
        dw4_model.divergence(np.zeros((2, 3, 2)), 0.5)
    with pytest.raises(eqflow.Error, match=r"t has shape \[3\], expected \[2\]"):
        dw4_model.field(np.zeros((2, 4, 2)), np.zeros(3))


def test_wrong_dtype(dw4_model):
    with pytest.raises(eqflow.Error, match="dtype int64"):
        dw4_model.field(np.zeros((2, 4, 2), dtype=np.int64), 0.5)
    with pytest.raises(eqflow.Error, match="dtype float16"):
        dw4_model.field(np.zeros((2, 4, 2), dtype=np.float16), 0.5)


def test_non_contiguous(dw4_model, rng):
    x = np.asfortranarray(centred(rng.normal(size=(3, 4, 2))))
    with pytest.raises(eqflow.Error, match="not C-contiguous"):
        dw4_model.field(x, 0.5)
    with pytest.raises(eqflow.Error, match="not C-contiguous"):
        dw4_model.field(rng.normal(size=(3, 8, 2))[:, ::2], 0.5)


def test_nan(dw4_model, rng):
    x = centred(rng.normal(size=(2, 4, 2)))
    x[1, 2, 0] = np.nan
    with pytest.raises(eqflow.Error, match=r"x holds nan at \[1, 2, 0\]"):
        dw4_model.field(x, 0.5)
    with pytest.raises(eqflow.Error, match="t holds"):
        dw4_model.field(np.zeros((2, 4, 2)), np.array([0.5, np.inf]))
    with pytest.raises(eqflow.Error, match="x holds"):
        eqflow.energy("dw4", x)
    with pytest.raises(eqflow.Error, match="NaN"):
        eqflow.assign(np.array([[[0.0, np.nan], [1.0, 2.0]]]))


def test_files_and_names(tmp_path):
    with pytest.raises(eqflow.Error, match="nope.safetensors"):
        eqflow.load_model(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{]}xx")
    with pytest.raises(eqflow.Error, match="junk.safetensors"):
        eqflow.load_model(tmp_path / "junk.safetensors")
    with pytest.raises(eqflow.Error, match="lj13"):  # the message lists the choices
        eqflow.energy("argon", np.zeros((1, 4, 2)))
    with pytest.raises(eqflow.Error, match="coupling"):
        eqflow.couple(np.zeros((2, 4, 2)), np.zeros((2, 4, 2)), kind="sinkhorn")


def test_wrong_device_requests(dw4_model):
    if eqflow.cuda_available():
        pytest.skip("a GPU is present")
    with pytest.raises(eqflow.Error, match="(?i)cuda"):
        eqflow.sample(dw4_model, 4, device="cuda")


def test_other_shapes():
    with pytest.raises(eqflow.Error, match=r"expected \[P, n, n\]"):
        eqflow.assign(np.zeros((2, 3, 4)))
    with pytest.raises(eqflow.Error, match=r"expected \[B, 4, 2\]"):
        eqflow.energy("dw4", np.zeros((3, 5)))
    with pytest.raises(eqflow.Error, match=r"x1 has shape"):
        eqflow.couple(np.zeros((2, 4, 2)), np.zeros((3, 4, 2)))


def test_interpreter_survives_a_barrage(tmp_path):
    # Every bad call in a child interpreter: it must end normally, having caught them all.
    code = r"""
import numpy as np, eqflow
m = eqflow.make_model(4, 2, hidden=4, layers=1)
bad = [lambda: m.field(np.zeros((2, 9)), 0.5), lambda: m.field(np.zeros((2, 4, 2), np.int8), 0),
       lambda: m.field(np.full((2, 4, 2), np.nan), 0.5), lambda: m.field([[1, 2]], 0.5),
       lambda: m.field(np.zeros((2, 4, 2)), "x"), lambda: m.field(np.zeros(()), 0.5),
       lambda: eqflow.assign(np.full((1, 3, 3), np.inf)), lambda: eqflow.assign(np.zeros((0,))),
       lambda: eqflow.energy("dw4", np.zeros((2, 4, 2), np.complex128)),
       lambda: eqflow.train("dw4", np.zeros((4, 4, 2)), epochs=0),
       lambda: eqflow.make_model(1, 2), lambda: m.set_parameters(np.zeros(3))]
caught = 0
for f in bad:
    try:
        f()
    except Exception as e:
        caught += 1
print("caught", caught, "of", len(bad))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "caught 12 of 12" in r.stdout, r.stdout + r.stderr
