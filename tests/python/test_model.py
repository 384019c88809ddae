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


def test_half_precision_files(dw4_model, tmp_path):
    for dtype, tol in (("f16", 1e-3), ("bf16", 8e-3)):
        path = tmp_path / f"m_{dtype}.safetensors"
        dw4_model.save(path, dtype=dtype)
        again = eqflow.load_model(path).parameters()
        np.testing.assert_allclose(again, dw4_model.parameters(), rtol=tol, atol=1e-7)
        assert not np.array_equal(again, dw4_model.parameters())  # really rounded


def test_resaved_by_safetensors_torch_loads(dw4_model, tmp_path, rng):
    """A model re-saved by safetensors.torch (same tensors and metadata, tensors in sorted
    order) loads: the checksum is keyed by tensor name. So does one converted to float16 by a
    user who drops our checksums."""
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    from safetensors import safe_open

    path = tmp_path / "ours.safetensors"
    dw4_model.save(path)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = st.load_file(str(path))
    resaved = tmp_path / "resaved.safetensors"
    st.save_file(tensors, str(resaved), metadata=metadata)
    again = eqflow.load_model(resaved)
    np.testing.assert_array_equal(again.parameters(), dw4_model.parameters())
    x = rng.normal(size=(3, 4, 2))
    x -= x.mean(axis=1, keepdims=True)
    np.testing.assert_array_equal(again.field(x, 0.3), dw4_model.field(x, 0.3))

    half = {k: v.to(torch.float16) for k, v in tensors.items()}
    meta = {k: v for k, v in metadata.items() if "checksum" not in k}
    st.save_file(half, str(tmp_path / "half.safetensors"), metadata=meta)
    h = eqflow.load_model(tmp_path / "half.safetensors").parameters()
    np.testing.assert_allclose(h, dw4_model.parameters(), rtol=1e-3, atol=1e-7)

    # A changed value under our checksum is caught.
    bad = dict(tensors)
    bad["embedding.weight"] = bad["embedding.weight"] + 1e-3
    st.save_file(bad, str(tmp_path / "bad.safetensors"), metadata=metadata)
    with pytest.raises(eqflow.Error, match="checksum mismatch"):
        eqflow.load_model(tmp_path / "bad.safetensors")
