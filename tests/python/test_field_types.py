"""Both vector-field types through the package: a shipped EGNN model (models/) against
`eqflow field`, and the kernel dynamics (docs/design.md section 4b) trained by eqflow.train --
its values against a NumPy twin of the closed form, its divergence against torch autograd's
Jacobian trace, the flows, and likelihood training against the command."""
import os

import numpy as np
import pytest

import eqflow
from conftest import ROOT, centred

# Double on both sides (the CLI with --reference): rounding only.
TOL = 1e-9

# A tiny kernel field: 8 radial and 4 time centres (40 parameters).
KERNEL = dict(field="kernel", radial_basis=8, time_basis=4, batch=16, seed=3, threads=1)


@pytest.fixture(scope="module")
def dw4_data():
    return eqflow.data("dw4", 64, seed=1, burn_in=100)


@pytest.fixture(scope="module")
def kernel_run(dw4_data, tmp_path_factory):
    """A kernel-field model trained by flow matching, written to RUN/model.safetensors."""
    d = tmp_path_factory.mktemp("kernel")
    eqflow.train("dw4", dw4_data, objective="ot", epochs=3, device="cpu", out_dir=d / "run",
                 **KERNEL)
    return d


@pytest.fixture(scope="module")
def kernel_model(kernel_run):
    return eqflow.load_model(kernel_run / "run" / "model.safetensors")


def kernel_field_numpy(model, x, t):
    """The closed form of include/eqflow/kernel_dynamics.h from the model's config and
    state_dict: v_i = sum_j (x_i - x_j) f(r_ij, t), f(r, t) = sum_k alpha_k(t) g_k(r),
    g_k(r) = exp(-gamma_k (r - mu_k)^2), alpha(t) = W phi(t) + b,
    phi_m(t) = exp(-gamma_t (t - c_m)^2)."""
    c, sd = model.config, model.state_dict()
    mu, gamma = np.array(c["radial_centres"]), np.array(c["radial_widths"])
    cm, gt = np.array(c["time_centres"]), c["time_width"]
    W, b = sd["time_map.weight"], sd["time_map.bias"]
    phi = np.exp(-gt * (t[:, None] - cm[None, :]) ** 2)          # [B, M]
    alpha = phi @ W.T + b                                        # [B, K]
    diff = x[:, :, None, :] - x[:, None, :, :]                   # [B, n, n, d]
    r = np.sqrt((diff ** 2).sum(-1))                             # [B, n, n]
    g = np.exp(-gamma * (r[..., None] - mu) ** 2)                # [B, n, n, K]
    f = (g * alpha[:, None, None, :]).sum(-1)                    # [B, n, n]
    n = x.shape[1]
    f = f * (1 - np.eye(n))                                      # j != i
    return (diff * f[..., None]).sum(axis=2)


def test_shipped_egnn_model_matches_cli(cli, tmp_path, rng):
    path = os.path.join(ROOT, "models", "dw4-ot.safetensors")
    model = eqflow.load_model(path)
    assert model.field_type == "egnn" and model.config["field_type"] == "egnn"
    assert (model.config["hidden"], model.config["layers"]) == (32, 3)
    x = centred(rng.normal(size=(6, 4, 2)) * 1.5)
    np.save(tmp_path / "x.npy", x)
    for t in (0.0, 0.6):
        v, div = model.field_and_divergence(x, t)
        cli("field", "--model", path, "--in", tmp_path / "x.npy", "--t", t, "--out",
            tmp_path / "v.npy", "--div-out", tmp_path / "div.npy", "--device", "cpu",
            "--reference")
        ref = np.load(tmp_path / "v.npy").reshape(v.shape)
        assert np.abs(ref).max() > 0
        np.testing.assert_allclose(v, ref, rtol=TOL, atol=TOL * np.abs(ref).max())
        ref_div = np.load(tmp_path / "div.npy")
        np.testing.assert_allclose(div, ref_div, rtol=TOL, atol=TOL * np.abs(ref_div).max())
        np.testing.assert_array_equal(model.divergence(x, t), div)


def test_kernel_model_loads_with_its_own_config(kernel_model, kernel_run):
    m = kernel_model
    assert m.field_type == "kernel"
    c = m.config
    assert c["field_type"] == "kernel" and c["system"] == "dw4"
    assert (m.n_particles, m.dim, m.length_scale) == (4, 2, 1.0)
    assert len(c["radial_centres"]) == len(c["radial_widths"]) == 8
    assert len(c["time_centres"]) == 4 and c["time_width"] > 0
    # The EGNN's sizes are not part of a kernel model's configuration.
    for key in ("hidden", "layers", "attention"):
        assert key not in c
    with pytest.raises(KeyError):
        c["hidden"]
    assert "field_type='kernel'" in repr(m) and "radial_basis=8" in repr(m)
    assert [(name, shape) for name, shape, _ in m.layout()] == [("time_map.weight", (8, 4)),
                                                                ("time_map.bias", (8,))]
    assert m.parameter_count == 40
    # Trained: not the initialisation's zero bias.
    assert np.abs(m.state_dict()["time_map.bias"]).max() > 0
    # Saved and loaded again, the same model.
    again_path = kernel_run / "again.safetensors"
    m.save(again_path)
    again = eqflow.load_model(again_path)
    assert again.field_type == "kernel"
    np.testing.assert_array_equal(again.parameters(), m.parameters())


def test_kernel_field_is_the_closed_form(kernel_model, rng):
    x = centred(rng.normal(size=(5, 4, 2)) * 1.5)
    t = rng.uniform(size=5)
    v = kernel_model.field(x, t)
    expected = kernel_field_numpy(kernel_model, x, t)
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(v, expected, rtol=TOL, atol=TOL * np.abs(expected).max())
    # [B, n*d] and float32 input as for the EGNN.
    np.testing.assert_array_equal(kernel_model.field(x.reshape(5, 8), t), v.reshape(5, 8))
    v32 = kernel_model.field(x.astype(np.float32), t)
    assert v32.dtype == np.float32
    np.testing.assert_allclose(v32, v, atol=1e-5)


def test_kernel_field_matches_cli(cli, kernel_run, kernel_model, tmp_path, rng):
    path = kernel_run / "run" / "model.safetensors"
    x = centred(rng.normal(size=(4, 4, 2)))
    np.save(tmp_path / "x.npy", x)
    v, div = kernel_model.field_and_divergence(x, 0.4)
    cli("field", "--model", path, "--in", tmp_path / "x.npy", "--t", 0.4, "--out",
        tmp_path / "v.npy", "--div-out", tmp_path / "div.npy", "--device", "cpu", "--reference")
    ref = np.load(tmp_path / "v.npy").reshape(v.shape)
    np.testing.assert_allclose(v, ref, rtol=TOL, atol=TOL * np.abs(ref).max())
    np.testing.assert_allclose(div, np.load(tmp_path / "div.npy"), rtol=TOL, atol=TOL)


def test_kernel_divergence_is_the_jacobian_trace(kernel_model):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    eqtorch = pytest.importorskip("eqflow.torch")

    field = eqtorch.Field(kernel_model)
    gen = torch.Generator().manual_seed(int(os.environ.get("EQFLOW_TEST_SEED", "1234")))
    x = torch.randn(3, 4, 2, dtype=torch.float64, generator=gen) * 1.5
    x = x - x.mean(dim=1, keepdim=True)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    # J[b, i, a, c, j, e] = dv[b, i, a] / dx[c, j, e], by torch autograd through
    # eqflow.torch.Field, i.e. eqflow's reverse mode (Field::backward of the kernel field).
    J = torch.autograd.functional.jacobian(lambda x_: field(t, x_), x)
    trace = torch.stack([J[b, :, :, b].reshape(8, 8).diagonal().sum() for b in range(3)])
    div = kernel_model.divergence(x, t)
    assert isinstance(div, torch.Tensor) and div.shape == (3,)
    assert trace.abs().max() > 1e-3
    torch.testing.assert_close(div, trace, atol=TOL, rtol=TOL)
    _, div_field = field.divergence(t, x)
    torch.testing.assert_close(div_field, div, atol=0, rtol=0)
    # And the parameter gradient against finite differences (v is linear in the parameters).
    xa = x.clone().requires_grad_(True)
    params = field.params.detach().clone().requires_grad_(True)
    f = eqtorch._FieldFunction.apply
    assert torch.autograd.gradcheck(lambda x_, p_: f(x_, t, p_, kernel_model), (xa, params),
                                    eps=1e-6, atol=1e-6, rtol=1e-5)
    # to_model keeps the field type.
    assert field.to_model().field_type == "kernel"


def test_kernel_field_on_cuda(kernel_model, dw4_data, rng):
    # The kernel field has a CUDA backend (tests/test_kernel_field_gpu.cpp checks its numbers):
    # device="cuda" runs it on a usable GPU and is an error that says why without one.
    if not eqflow.cuda_available():
        with pytest.raises(eqflow.Error, match="--device cuda asked for"):
            eqflow.sample(kernel_model, 4, device="cuda")
        with pytest.raises(eqflow.Error, match="--device cuda asked for"):
            eqflow.log_likelihood(kernel_model, dw4_data[:4], device="cuda")
        return
    s = eqflow.sample(kernel_model, 4, seed=2, device="cuda")
    assert s["failed_integrations"] == 0 and np.isfinite(s["log_q"]).all()
    torch = pytest.importorskip("torch", reason="torch is not installed")
    if not torch.cuda.is_available():
        return
    x = centred(rng.normal(size=(3, 4, 2)) * 1.5)
    v_cpu = kernel_model.field(x, 0.5)
    v_gpu = kernel_model.field(torch.tensor(x, dtype=torch.float32, device="cuda"), 0.5)
    np.testing.assert_allclose(v_gpu.cpu().numpy(), v_cpu, rtol=2e-5,
                               atol=2e-5 * np.abs(v_cpu).max())


def test_kernel_flows(kernel_model, dw4_data):
    # On the CPU (auto would pick a usable GPU, float32: not these tolerances).
    s = eqflow.sample(kernel_model, 8, seed=2, atol=1e-9, rtol=1e-9, device="cpu")
    assert s["x"].shape == (8, 4, 2) and s["failed_integrations"] == 0
    assert np.isfinite(s["log_q"]).all() and 0 < s["ess"] <= 1
    # Integrating the samples back gives their log-density.
    ll = eqflow.log_likelihood(kernel_model, s["x"], atol=1e-9, rtol=1e-9, device="cpu")
    np.testing.assert_allclose(ll["log_q"], s["log_q"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ll["x0"], s["x0"], atol=1e-6)
    test = dw4_data[:8]
    m = eqflow.evaluate(kernel_model, test, samples=8, solver="rk4", steps=4, device="cpu")
    ll = eqflow.log_likelihood(kernel_model, test, solver="rk4", steps=4, device="cpu")
    assert -ll["log_q"].mean() == pytest.approx(m["nll_normalized"], rel=1e-9)
    assert m["samples"].shape == (8, 4, 2)


def test_likelihood_training_lowers_the_nll(dw4_data):
    def nll(model):
        return -eqflow.log_likelihood(model, dw4_data, solver="rk4", steps=4)["log_q"].mean()

    losses = []
    model, info = eqflow.train("dw4", dw4_data, objective="likelihood", ode_steps=4, epochs=10,
                               lr=1e-2, device="cpu",
                               progress=lambda step, total, loss, lr: losses.append(loss),
                               **KERNEL)
    assert model.field_type == "kernel" and info["step"] == info["total_steps"] == len(losses)
    assert np.isfinite(losses).all() and info["skipped"] == 0
    # Training starts within 1e-3 of the zero field (the identity flow): the trained flow
    # assigns the data a clearly higher likelihood than that.
    identity = info["raw_model"]
    identity.set_parameters(np.zeros(identity.parameter_count))
    assert nll(model) < nll(identity) - 1.0
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


def test_likelihood_training_matches_cli(cli, dw4_data, tmp_path):
    np.save(tmp_path / "train.npy", dw4_data)
    args = dict(epochs=2, batch=16, lr=1e-2, seed=3, threads=1)
    cli("train", "--system", "dw4", "--data", tmp_path / "train.npy", "--out", tmp_path / "run",
        "--objective", "likelihood", "--ode-steps", 3, "--field", "kernel", "--radial-basis", 8,
        "--time-basis", 4, *[a for k, v in args.items() for a in (f"--{k}", v)])
    model, _ = eqflow.train("dw4", dw4_data, objective="likelihood", ode_steps=3,
                            field="kernel", radial_basis=8, time_basis=4, **args)
    cli_model = eqflow.load_model(tmp_path / "run" / "model.safetensors")
    assert cli_model.field_type == "kernel"
    # Both on the fast float kernel field with one thread, deterministic: the same weights.
    np.testing.assert_array_equal(model.parameters(), cli_model.parameters())
    # The EGNN trains by likelihood too (the default field).
    egnn, info = eqflow.train("dw4", dw4_data[:16], objective="likelihood", ode_steps=1,
                              epochs=1, batch=8, hidden=4, layers=1, threads=1)
    assert egnn.field_type == "egnn" and info["step"] == 1 and np.isfinite(info["loss"])


def test_time_power_reaches_the_draws(dw4_data):
    # time_power 1 is the default draw (the same model bit for bit); 2 trains on other times.
    kw = dict(objective="ot", epochs=2, batch=16, hidden=8, layers=1, threads=1, seed=3)
    base, _ = eqflow.train("dw4", dw4_data, **kw)
    one, _ = eqflow.train("dw4", dw4_data, time_power=1.0, **kw)
    two, _ = eqflow.train("dw4", dw4_data, time_power=2.0, **kw)
    assert np.array_equal(one.parameters(), base.parameters())
    assert not np.array_equal(two.parameters(), base.parameters())


@pytest.mark.parametrize("kwargs, match", [
    (dict(field="mlp"), "choose egnn or kernel"),
    (dict(objective="nll"), "choose fm, ot, eqot or likelihood"),
    (dict(field="kernel", hidden=8), "hidden and layers size the EGNN"),
    (dict(field="egnn", radial_basis=8), "size the kernel field"),
    (dict(field="kernel", time_basis=-1), "must be positive"),
    (dict(objective="ot", ode_steps=4), "applies to objective='likelihood' only"),
    (dict(objective="ot", eqot_starts=1), "applies to objective='eqot' only"),
    (dict(objective="eqot", eqot_starts=9), "1..8"),
    (dict(objective="ot", time_power=0), "time_power must be in"),
    (dict(objective="likelihood", time_power=2), "flow matching .fm, ot, eqot. only"),
    (dict(objective="likelihood", ode_steps=0), "1..100000"),
    (dict(objective="likelihood", device="cuda"),
     "EGNN likelihood training on CUDA is not built"),
    (dict(reference=True, device="cuda"), "CPU reference"),
])
def test_train_refuses_what_the_command_refuses(dw4_data, kwargs, match):
    with pytest.raises(eqflow.Error, match=match):
        eqflow.train("dw4", dw4_data, epochs=1, batch=16, **kwargs)


def test_kernel_likelihood_training_is_accepted_on_cuda(dw4_data):
    # The kernel field's likelihood step runs on its CUDA field: it trains where a GPU is usable
    # and otherwise fails only for want of one (the EGNN's is refused above).
    try:
        _, info = eqflow.train("dw4", dw4_data, epochs=1, batch=16, field="kernel",
                               objective="likelihood", ode_steps=2, device="cuda")
    except eqflow.Error as e:
        assert "--device cuda asked for" in str(e), str(e)
    else:
        assert info["step"] > 0
