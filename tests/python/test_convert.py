"""eqflow.convert: the reference code's EGNN checkpoints (torch pickles, an `egnn.` prefix) to
eqflow model files."""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")

import eqflow  # noqa: E402
import eqflow.convert  # noqa: E402
from test_torch import centred, egnn_torch  # noqa: E402

TOL = 1e-9


class Dynamics(torch.nn.Module):
    """The reference code's layout: the EGNN as the submodule `egnn` of a dynamics module."""

    def __init__(self, net):
        super().__init__()
        self.egnn = net
        self.register_buffer("n_particles", torch.tensor(4))


def reference_checkpoint(path, seed=0, **kw):
    torch.manual_seed(seed)
    net = egnn_torch().EGNN(4, 2, hidden=8, layers=2, **kw).double()
    flow = torch.nn.Module()
    flow._dynamics = Dynamics(net)
    torch.save({"epoch": 12, "model_state_dict": flow.state_dict(),
                "optimizer_state_dict": {"state": {}, "param_groups": []}}, path)
    return net


def test_convert_and_field_matches(tmp_path):
    net = reference_checkpoint(tmp_path / "ckpt.pt")
    out = tmp_path / "model.safetensors"
    rc = eqflow.convert.main([str(tmp_path / "ckpt.pt"), str(out), "--system", "dw4"])
    assert rc == 0
    model = eqflow.load_model(out)
    c = model.config
    assert (c["hidden"], c["layers"], c["attention"], c["n_particles"]) == (8, 2, True, 4)
    x = centred(torch.randn(5, 4, 2, dtype=torch.float64))
    t = torch.rand(5, dtype=torch.float64)
    np.testing.assert_allclose(model.field(x.numpy(), t.numpy()), net(x, t).detach().numpy(),
                               atol=TOL, rtol=TOL)


def test_convert_without_attention_and_tanh(tmp_path):
    net = reference_checkpoint(tmp_path / "ckpt.pt", attention=False, tanh=False)
    model = eqflow.convert.convert_reference_checkpoint(tmp_path / "ckpt.pt", system="dw4",
                                                        tanh=False)
    assert not model.config["attention"]
    x = centred(torch.randn(3, 4, 2, dtype=torch.float64))
    np.testing.assert_allclose(model.field(x.numpy(), 0.25),
                               net(x, torch.full((3,), 0.25, dtype=torch.float64)).detach().numpy(),
                               atol=TOL, rtol=TOL)


def test_convert_errors(tmp_path):
    reference_checkpoint(tmp_path / "ckpt.pt")
    with pytest.raises(eqflow.Error, match="particle count"):
        eqflow.convert.convert_reference_checkpoint(tmp_path / "ckpt.pt")
    sd = torch.load(tmp_path / "ckpt.pt")["model_state_dict"]
    two = {"model": sd, "ema": {k: v.clone() for k, v in sd.items()}}
    with pytest.raises(eqflow.Error, match="several EGNNs"):
        eqflow.convert.convert_reference_checkpoint(two, system="dw4")
    m = eqflow.convert.convert_reference_checkpoint(two, system="dw4",
                                                    prefix="ema._dynamics.egnn.")
    assert m.parameter_count > 0
    del sd["_dynamics.egnn.gcl_1.node_mlp.2.bias"]
    with pytest.raises(eqflow.Error, match="gcl_1.node_mlp.2.bias"):
        eqflow.convert.convert_reference_checkpoint({"state_dict": sd}, system="dw4")
    with pytest.raises(eqflow.Error, match="no EGNN"):
        eqflow.convert.convert_reference_checkpoint({"w": torch.zeros(3)}, system="dw4")
