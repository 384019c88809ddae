"""eqflow.torch.Field: autograd through the library's reverse mode, against torch's own autograd
on tools/egnn_torch.py (an independent PyTorch module of the same field), gradcheck, and ODE use."""
import importlib.util
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")

import eqflow  # noqa: E402
import eqflow.torch  # noqa: E402
from conftest import DATA, TOOLS  # noqa: E402

# Double precision on both sides: rounding only.
TOL = 1e-9


def egnn_torch():
    spec = importlib.util.spec_from_file_location("egnn_torch", os.path.join(TOOLS, "egnn_torch.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def torch_twin(model):
    """tools/egnn_torch.EGNN with the eqflow model's configuration and weights."""
    c = model.config
    net = egnn_torch().EGNN(c["n_particles"], c["dim"], hidden=c["hidden"], layers=c["layers"],
                            attention=c["attention"], tanh=c["tanh"],
                            coords_range=c["coords_range"], atom_types=c["atom_types"] or None)
    net = net.double()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    return net


def centred(x):
    return x - x.mean(dim=1, keepdim=True)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(int(os.environ.get("EQFLOW_TEST_SEED", "1234")))


@pytest.mark.parametrize("name", ["dw4", "typed"])
def test_matches_egnn_torch_values_and_gradients(name, gen):
    model = eqflow.load_model(os.path.join(DATA, f"egnn_{name}.safetensors"))
    net = torch_twin(model)
    field = eqflow.torch.Field(model)
    n, d = model.n_particles, model.dim
    x = centred(torch.randn(4, n, d, dtype=torch.float64, generator=gen))
    t = torch.rand(4, dtype=torch.float64, generator=gen)
    w = torch.randn(4, n, d, dtype=torch.float64, generator=gen)

    xa = x.clone().requires_grad_(True)
    va = field(t, xa)
    (va * w).sum().backward()
    xb = x.clone().requires_grad_(True)
    vb = net(xb, t)
    (vb * w).sum().backward()
    torch.testing.assert_close(va, vb.detach(), atol=TOL, rtol=TOL)
    torch.testing.assert_close(xa.grad, xb.grad, atol=TOL, rtol=TOL)
    # The flat gradient in the layout's order; embedding_out is unused (no torch gradient).
    params = dict(net.named_parameters())
    grads = torch.cat([(params[k].grad if params[k].grad is not None
                        else torch.zeros_like(params[k])).reshape(-1)
                       for k, _, _ in model.layout()])
    torch.testing.assert_close(field.params.grad, grads, atol=TOL, rtol=TOL)


def test_gradcheck_cpu_reference(gen):
    model = eqflow.make_model(4, 2, hidden=4, layers=2, seed=3)
    field = eqflow.torch.Field(model)
    x = centred(torch.randn(2, 4, 2, dtype=torch.float64, generator=gen)).requires_grad_(True)
    t = torch.tensor([0.2, 0.7], dtype=torch.float64)
    params = field.params.detach().clone().requires_grad_(True)
    f = eqflow.torch._FieldFunction.apply
    assert torch.autograd.gradcheck(lambda x_, p_: f(x_, t, p_, model), (x, params),
                                    eps=1e-6, atol=1e-6, rtol=1e-5)
    # Through the module (flat [B, n*d] state, a 0-d time as torchdiffeq passes it).
    x2 = x.detach().reshape(2, 8).clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x_: field(torch.tensor(0.4, dtype=torch.float64), x_),
                                    (x2,), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_same_field_as_the_model(dw4_model, gen):
    field = eqflow.torch.Field(dw4_model)
    x = centred(torch.randn(3, 4, 2, dtype=torch.float64, generator=gen))
    v = field(0.5, x)
    np.testing.assert_array_equal(v.detach().numpy(), dw4_model.field(x.numpy(), 0.5))
    # The plain API returns torch for torch.
    vt = dw4_model.field(x, torch.full((3,), 0.5, dtype=torch.float64))
    assert isinstance(vt, torch.Tensor)
    torch.testing.assert_close(vt, v.detach(), atol=0, rtol=0)
    v2, div = field.divergence(0.5, x)
    torch.testing.assert_close(div, torch.from_numpy(dw4_model.divergence(x.numpy(), 0.5)))
    v32 = field(0.5, x.float())
    assert v32.dtype == torch.float32
    torch.testing.assert_close(v32, v.float().detach(), atol=1e-5, rtol=1e-5)


def test_training_in_torch_updates_the_field(gen):
    model = eqflow.make_model(4, 2, hidden=8, layers=2, seed=1)
    field = eqflow.torch.Field(model)
    opt = torch.optim.Adam(field.parameters(), lr=1e-2)
    x = centred(torch.randn(16, 4, 2, dtype=torch.float64, generator=gen))
    target = -x
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = (field(0.5, x) - target).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    trained = field.to_model()
    np.testing.assert_allclose(trained.field(x.numpy(), 0.5), field(0.5, x).detach().numpy(),
                               atol=TOL, rtol=TOL)
    # The Model the Field was made from keeps its own parameters.
    np.testing.assert_array_equal(model.parameters(), eqflow.make_model(4, 2, hidden=8, layers=2,
                                                                        seed=1).parameters())


def rk4(f, x, ts):
    # What an ODE solver does: f(t, x) with a 0-d t tensor.
    for t0, t1 in zip(ts[:-1], ts[1:]):
        h = t1 - t0
        k1 = f(t0, x)
        k2 = f(t0 + h / 2, x + h / 2 * k1)
        k3 = f(t0 + h / 2, x + h / 2 * k2)
        k4 = f(t1, x + h * k3)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def test_ode_integration_and_backprop(dw4_model, gen):
    field = eqflow.torch.Field(dw4_model)
    net = torch_twin(dw4_model)
    x0 = centred(torch.randn(5, 4, 2, dtype=torch.float64, generator=gen)).reshape(5, 8)
    ts = torch.linspace(0, 1, 5, dtype=torch.float64)
    xa = x0.clone().requires_grad_(True)
    ya = rk4(field, xa, ts)
    ya.pow(2).sum().backward()
    xb = x0.clone().requires_grad_(True)
    yb = rk4(lambda t, x: net(x.reshape(-1, 4, 2), t.expand(x.shape[0])).reshape(-1, 8), xb, ts)
    yb.pow(2).sum().backward()
    torch.testing.assert_close(ya, yb.detach(), atol=TOL, rtol=TOL)
    torch.testing.assert_close(xa.grad, xb.grad, atol=TOL, rtol=TOL)


def test_torchdiffeq_if_installed(dw4_model, gen):
    torchdiffeq = pytest.importorskip("torchdiffeq", reason="torchdiffeq is not installed")
    field = eqflow.torch.Field(dw4_model)
    x0 = centred(torch.randn(3, 4, 2, dtype=torch.float64, generator=gen)).requires_grad_(True)
    y = torchdiffeq.odeint(field, x0, torch.tensor([0.0, 1.0], dtype=torch.float64), rtol=1e-8,
                           atol=1e-8)
    y[-1].pow(2).sum().backward()
    assert x0.grad is not None and torch.isfinite(x0.grad).all()
    # The adjoint method asks the field for vector-Jacobian products with respect to x and the
    # parameters: the same gradients as backpropagating through the solver's steps.
    xa = x0.detach().clone().requires_grad_(True)
    ya = torchdiffeq.odeint_adjoint(field, xa, torch.tensor([0.0, 1.0], dtype=torch.float64),
                                    rtol=1e-8, atol=1e-8)
    ya[-1].pow(2).sum().backward()
    torch.testing.assert_close(ya[-1], y[-1].detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(xa.grad, x0.grad, atol=1e-4, rtol=1e-4)
    assert field.params.grad is not None and field.params.grad.abs().max() > 0


def test_bad_tensors(dw4_model):
    field = eqflow.torch.Field(dw4_model)
    with pytest.raises(eqflow.Error, match=r"x has shape \[2, 3, 2\]"):
        field(0.5, torch.zeros(2, 3, 2, dtype=torch.float64))
    with pytest.raises(eqflow.Error, match="not C-contiguous"):
        field(0.5, torch.zeros(2, 2, 4, dtype=torch.float64).transpose(1, 2))
    with pytest.raises(eqflow.Error, match="floating-point"):
        field(0.5, torch.zeros(2, 4, 2, dtype=torch.int64))
    x = torch.zeros(2, 4, 2, dtype=torch.float64)
    x[0, 0, 0] = float("nan")
    with pytest.raises(eqflow.Error, match="x holds nan"):
        field(0.5, x)
    with pytest.raises(eqflow.Error, match="not C-contiguous"):
        dw4_model.field(torch.zeros(2, 2, 4, dtype=torch.float64).transpose(1, 2), 0.5)
    with pytest.raises(eqflow.Error, match="dtype int32"):
        dw4_model.field(torch.zeros(2, 4, 2, dtype=torch.int32), 0.5)
    if not torch.cuda.is_available():
        # A device the library cannot read: an exception, not a crash.
        with pytest.raises((eqflow.Error, TypeError, RuntimeError)):
            dw4_model.field(torch.zeros(2, 4, 2, device="meta"), 0.5)


@pytest.mark.skipif(not (torch.cuda.is_available() and eqflow.cuda_available()),
                    reason="needs a GPU and eqflow built with CUDA")
def test_cuda_tensors(dw4_model, gen):
    field_cpu = eqflow.torch.Field(dw4_model)
    field_gpu = eqflow.torch.Field(dw4_model, dtype=torch.float32, device="cuda")
    x = centred(torch.randn(6, 4, 2, dtype=torch.float64, generator=gen))
    xg = x.float().cuda().requires_grad_(True)
    vg = field_gpu(0.3, xg)
    assert vg.is_cuda and vg.dtype == torch.float32
    torch.testing.assert_close(vg.double().cpu(), field_cpu(0.3, x).detach(), atol=1e-4, rtol=1e-4)
    vg.pow(2).sum().backward()
    xc = x.clone().requires_grad_(True)
    field_cpu(0.3, xc).pow(2).sum().backward()
    torch.testing.assert_close(xg.grad.double().cpu(), xc.grad, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(field_gpu.params.grad.double().cpu(), field_cpu.params.grad,
                               atol=1e-4, rtol=1e-3)
    v, div = dw4_model.field_and_divergence(x.float().cuda(), 0.3)
    assert v.is_cuda and div.is_cuda
    torch.testing.assert_close(div.double().cpu(),
                               torch.from_numpy(dw4_model.divergence(x.numpy(), 0.3)),
                               atol=1e-3, rtol=1e-3)
    with pytest.raises(eqflow.Error, match="float32"):
        dw4_model.field(x.cuda(), 0.3)
    u = eqflow.energy("dw4", x.float().cuda())
    assert u.is_cuda
    torch.testing.assert_close(u.double().cpu(), torch.from_numpy(eqflow.energy("dw4", x.numpy())),
                               atol=1e-3, rtol=1e-4)
    perm = eqflow.assign(torch.rand(3, 5, 5, device="cuda"))
    assert perm.is_cuda and perm.dtype == torch.int64
