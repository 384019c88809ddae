"""An independent PyTorch implementation of eqflow's EGNN vector field (docs/design.md section 4).

Written from the design document only, as a plain nn.Module, so that its state_dict has the
names and shapes eqflow's model files use. It is the second opinion the C++ CPU reference is
checked against (tests/test_egnn_fixtures.cpp, via tools/make_egnn_fixtures.py). Not needed to
build or test eqflow.

    v(x, t) = x^L - x^0, particle mean removed;  x [B, n, d], t [B]
"""
import math

import torch
from torch import nn


class GCL(nn.Module):
    """One E(n)-equivariant graph convolution layer (E_GCL) on a fully connected graph."""

    def __init__(self, hidden, attention, tanh, coords_range):
        super().__init__()
        self.edge_mlp = nn.Sequential(nn.Linear(2 * hidden + 2, hidden), nn.SiLU(),
                                      nn.Linear(hidden, hidden), nn.SiLU())
        self.node_mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(),
                                      nn.Linear(hidden, hidden))
        last = nn.Linear(hidden, 1, bias=False)
        nn.init.xavier_uniform_(last.weight, gain=0.001)
        self.coord_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), last)
        self.attention = attention
        if attention:
            self.att_mlp = nn.Sequential(nn.Linear(hidden, 1), nn.Sigmoid())
        self.tanh = tanh
        self.coords_range = coords_range

    def forward(self, h, x, a):
        # h [B, n, H], x [B, n, d], a [B, n, n] (squared input distances)
        B, n, H = h.shape
        diff = x[:, :, None, :] - x[:, None, :, :]          # [B, n, n, d]: x_i - x_j
        r = (diff ** 2).sum(-1)                               # [B, n, n]
        hi = h[:, :, None, :].expand(B, n, n, H)
        hj = h[:, None, :, :].expand(B, n, n, H)
        feats = torch.cat([hi, hj, r[..., None], a[..., None]], dim=-1)
        m = self.edge_mlp(feats)                              # [B, n, n, H]
        if self.attention:
            m = m * self.att_mlp(m)
        mask = 1.0 - torch.eye(n, dtype=h.dtype, device=h.device)   # no self-loops
        m = m * mask[None, :, :, None]
        c = self.coord_mlp(m)[..., 0]                         # [B, n, n]
        phi = self.coords_range * torch.tanh(c) if self.tanh else c
        unit = diff / (torch.sqrt(r + 1e-8) + 1.0)[..., None]
        x_new = x + (unit * (phi * mask)[..., None]).sum(2)
        agg = m.sum(2)                                        # [B, n, H]
        h_new = h + self.node_mlp(torch.cat([h, agg], dim=-1))
        return h_new, x_new


class EGNN(nn.Module):
    def __init__(self, n_particles, dim, hidden=32, layers=3, attention=True, tanh=True,
                 coords_range=None, atom_types=None):
        super().__init__()
        self.n, self.d = n_particles, dim
        self.atom_types = list(atom_types) if atom_types else []
        self.num_types = (max(self.atom_types) + 1) if self.atom_types else 0
        in_features = self.num_types + 1
        self.embedding = nn.Linear(in_features, hidden)
        self.embedding_out = nn.Linear(hidden, in_features)   # unused, part of the state_dict
        self.coords_range = coords_range if coords_range else 15.0 / layers
        self.layers = layers
        for l in range(layers):
            self.add_module(f"gcl_{l}", GCL(hidden, attention, tanh, self.coords_range))

    def features(self, t):
        B = t.shape[0]
        tt = t[:, None, None].expand(B, self.n, 1)
        if not self.num_types:
            return tt
        onehot = torch.zeros(self.n, self.num_types, dtype=t.dtype)
        onehot[torch.arange(self.n), torch.tensor(self.atom_types)] = 1.0
        return torch.cat([onehot[None].expand(B, -1, -1), tt], dim=-1)

    def forward(self, x, t):
        x0 = x
        a = ((x0[:, :, None, :] - x0[:, None, :, :]) ** 2).sum(-1)
        h = self.embedding(self.features(t))
        for l in range(self.layers):
            h, x = getattr(self, f"gcl_{l}")(h, x, a)
        v = x - x0
        return v - v.mean(dim=1, keepdim=True)


def divergence(model, x, t):
    """Exact divergence by autograd, one output coordinate at a time. x [B, n, d] -> [B]."""
    x = x.detach().clone().requires_grad_(True)
    v = model(x, t)
    B, n, d = x.shape
    div = torch.zeros(B, dtype=x.dtype)
    for i in range(n):
        for k in range(d):
            g, = torch.autograd.grad(v[:, i, k].sum(), x, retain_graph=True)
            div = div + g[:, i, k]
    return v.detach(), div


if __name__ == "__main__":
    torch.manual_seed(0)
    model = EGNN(13, 3, hidden=32, layers=3).double()
    print("LJ13 parameters:", sum(p.numel() for p in model.parameters()))
    x = torch.randn(2, 13, 3, dtype=torch.float64)
    v, div = divergence(model, x - x.mean(1, keepdim=True), torch.rand(2, dtype=torch.float64))
    print("v", v.shape, "div", div)
    assert math.isfinite(float(div.sum()))
