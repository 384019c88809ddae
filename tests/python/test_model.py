"""eqflow.Model: fields and divergences against the PyTorch fixtures, shapes, dtypes, files."""
import os
import re

import numpy as np
import pytest

import eqflow
from conftest import DATA, ROOT, centred, fixture

# The fixtures were made by tools/egnn_torch.py in float64: the CPU reference (double) agrees
# to rounding.
TOL_F64 = 1e-9
# float32 inputs are widened, computed in double and rounded back: float32 resolution.
TOL_F32 = 1e-5


def test_version_matches_cmake():
    text = open(os.path.join(ROOT, "CMakeLists.txt")).read()
    version = re.search(r"project\(eqflow VERSION ([0-9.]+)", text).group(1)
    assert eqflow.__version__ == version


@pytest.mark.parametrize("name", ["dw4", "lj13", "typed"])
def test_field_matches_pytorch_fixtures(name):
    model = eqflow.load_model(os.path.join(DATA, f"egnn_{name}.safetensors"))
    x, t, v, div = (fixture(name, k) for k in ("x", "t", "v", "div"))
    out = model.field(x, t)
    assert out.shape == x.shape and out.dtype == np.float64
    np.testing.assert_allclose(out, v, atol=TOL_F64, rtol=TOL_F64)
    np.testing.assert_allclose(model.divergence(x, t), div, atol=TOL_F64, rtol=TOL_F64)
    assert np.abs(out).max() > 0  # not a field that silently does nothing


def test_shapes_and_scalar_time(dw4_model, rng):
    x = centred(rng.normal(size=(5, 4, 2)))
    v3 = dw4_model.field(x, 0.3)
    assert v3.shape == (5, 4, 2)
    v2 = dw4_model.field(x.reshape(5, 8), np.full(5, 0.3))
    assert v2.shape == (5, 8)
    np.testing.assert_array_equal(v2.reshape(5, 4, 2), v3)
    v, div = dw4_model.field_and_divergence(x, np.float64(0.3))
    np.testing.assert_array_equal(v, v3)
    assert div.shape == (5,)
    assert dw4_model.field(x[:0], 0.5).shape == (0, 4, 2)  # empty batch


def test_float32_input_gives_float32(dw4_model, rng):
    x = centred(rng.normal(size=(3, 4, 2))).astype(np.float32)
    v = dw4_model.field(x, 0.5)
    assert v.dtype == np.float32
    np.testing.assert_allclose(v, dw4_model.field(x.astype(np.float64), 0.5), atol=TOL_F32)


def test_read_only_input(dw4_model, rng):
    x = centred(rng.normal(size=(2, 4, 2)))
    x.setflags(write=False)
    assert dw4_model.field(x, 0.5).shape == x.shape


def test_config_and_state_dict_round_trip(dw4_model, tmp_path, rng):
    c = dw4_model.config
    assert (c["n_particles"], c["dim"]) == (4, 2)
    sd = dw4_model.state_dict()
    assert sum(a.size for a in sd.values()) == dw4_model.parameter_count
    assert "embedding.weight" in sd and "gcl_0.edge_mlp.0.weight" in sd
    other = eqflow.make_model(4, 2, system="dw4", hidden=c["hidden"], layers=c["layers"],
                              attention=c["attention"], tanh=c["tanh"], seed=7)
    x = centred(rng.normal(size=(2, 4, 2)))
    assert not np.allclose(other.field(x, 0.5), dw4_model.field(x, 0.5))
    other.load_state_dict(sd)
    np.testing.assert_array_equal(other.field(x, 0.5), dw4_model.field(x, 0.5))
    path = tmp_path / "m.safetensors"
    other.save(path)
    again = eqflow.load_model(path)
    np.testing.assert_array_equal(again.parameters(), dw4_model.parameters())
    other.save(tmp_path / "m32.safetensors", dtype="f32")
    np.testing.assert_allclose(eqflow.load_model(tmp_path / "m32.safetensors").parameters(),
                               dw4_model.parameters(), rtol=1e-7, atol=1e-7)


def test_load_state_dict_names_the_problem(dw4_model):
    sd = dw4_model.state_dict()
    del sd["embedding.weight"]
    with pytest.raises(eqflow.Error, match="embedding.weight"):
        dw4_model.load_state_dict(sd)
    sd = dw4_model.state_dict()
    sd["gcl_0.edge_mlp.0.weight"] = sd["gcl_0.edge_mlp.0.weight"][:, :-1]
    with pytest.raises(eqflow.Error, match="gcl_0.edge_mlp.0.weight"):
        dw4_model.load_state_dict(sd)


def test_set_parameters(rng):
    m = eqflow.make_model(4, 2, hidden=8, layers=2, seed=1)
    x = centred(rng.normal(size=(2, 4, 2)))
    v = m.field(x, 0.5)
    p = m.parameters()
    m.set_parameters(p * 1.1)
    assert not np.allclose(m.field(x, 0.5), v)
    m.set_parameters(p)
    np.testing.assert_array_equal(m.field(x, 0.5), v)


def test_threads_share_a_model(dw4_model, rng):
    # Calls release the GIL; the model's fields and workspaces are behind a lock.
    from concurrent.futures import ThreadPoolExecutor

    xs = [centred(rng.normal(size=(16, 4, 2))) for _ in range(8)]
    expected = [dw4_model.field_and_divergence(x, 0.4) for x in xs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: dw4_model.field_and_divergence(x, 0.4), xs * 3))
    for i, (v, div) in enumerate(got):
        np.testing.assert_array_equal(v, expected[i % 8][0])
        np.testing.assert_array_equal(div, expected[i % 8][1])
