"""PyTorch reference benchmark of the work eqflow's GPU kernels do, for side-by-side ratios.

Uses the independent nn.Module of tools/egnn_torch.py (edge tensors materialised, as in the
published research code) and times, at the DW4 / LJ13 / LJ55 default sizes:
  field      v(x, t) for a batch of B samples
  fm_step    one flow-matching training step: eqot coupling done the way the reference code does
             it (per pair of the batch: scipy's linear_sum_assignment on particle distances plus a
             Kabsch rotation, in a Python double loop; then the batch assignment), interpolation,
             forward, MSE, backward, Adam
  divergence the exact divergence the way the reference computes it: one autograd backward per
             coordinate (n*d of them) on a shared forward
The eqot coupling's B^2 per-pair solves are timed on a subset of pairs and scaled to B^2 (the
output says so). Writes JSON (seconds per call and per sample) to --out.

    python3 tools/bench_torch.py --out torch.json [--device cuda] [--batch 256] [--systems lj13,lj55]
                                 [--clock wall|cpu]
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from egnn_torch import EGNN  # noqa: E402

SIZES = {"dw4": (4, 2, 32, 3), "lj13": (13, 3, 32, 3), "lj55": (55, 3, 64, 7)}


# Wall-clock by default; --clock cpu times the process's CPU seconds instead (one thread: the
# same thing on a quiet machine, and much steadier on a loaded one).
clock = time.perf_counter


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, device, repeat=3):
    fn()  # warm-up
    sync(device)
    best = float("inf")
    for _ in range(repeat):
        t0 = clock()
        fn()
        sync(device)
        best = min(best, clock() - t0)
    return best


def kabsch(p, q):
    """Rotation R (det +1) minimising |p - q R^T|; p, q centred [n, d]."""
    h = q.T @ p
    u, _, vt = np.linalg.svd(h)
    s = np.eye(p.shape[1])
    s[-1, -1] = np.sign(np.linalg.det(vt.T @ u.T))
    return vt.T @ s @ u.T


def eqot_pair_cost(x0, x1):
    from scipy.optimize import linear_sum_assignment
    cost = ((x0[:, None, :] - x1[None, :, :]) ** 2).sum(-1)
    _, col = linear_sum_assignment(cost)
    x1p = x1[col]
    r = kabsch(x0, x1p)
    aligned = x1p @ r.T
    return ((x0 - aligned) ** 2).sum(), aligned


def eqot_coupling_time(x0, x1, max_pairs):
    """Seconds for the full B^2 per-pair loop (timed on max_pairs pairs, scaled) + batch LSA."""
    from scipy.optimize import linear_sum_assignment
    B = x0.shape[0]
    pairs = [(i, j) for i in range(B) for j in range(B)][:max_pairs]
    t0 = clock()
    for i, j in pairs:
        eqot_pair_cost(x0[i], x1[j])
    per_pair = (clock() - t0) / len(pairs)
    t1 = clock()
    linear_sum_assignment(np.random.rand(B, B))
    return per_pair * B * B + (clock() - t1), len(pairs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--systems", default="dw4,lj13,lj55")
    ap.add_argument("--div-batch", type=int, default=32, help="samples for the divergence timing")
    ap.add_argument("--pairs", type=int, default=2000, help="eqot pairs actually solved per timing")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    args = ap.parse_args()
    global clock
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    device = torch.device(args.device)
    results = {"device": str(device), "torch": torch.__version__, "batch": args.batch, "systems": {}}
    for name in args.systems.split(","):
        n, d, H, L = SIZES[name]
        torch.manual_seed(0)
        model = EGNN(n, d, hidden=H, layers=L).to(device)
        B = args.batch
        x = torch.randn(B, n, d, device=device)
        x = x - x.mean(1, keepdim=True)
        t = torch.rand(B, device=device)
        row = {}
        with torch.no_grad():
            row["field_s"] = timeit(lambda: model(x, t), device)
        opt = torch.optim.Adam(model.parameters(), lr=5e-4)
        x1 = torch.randn(B, n, d, device=device)
        x1 = x1 - x1.mean(1, keepdim=True)
        coupling_s, pairs = eqot_coupling_time(x.cpu().double().numpy(), x1.cpu().double().numpy(), args.pairs)

        def step():
            tt = torch.rand(B, device=device)[:, None, None]
            xt = (1 - tt) * x + tt * x1
            loss = ((model(xt, tt[:, 0, 0]) - (x1 - x)) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        row["fm_step_network_s"] = timeit(step, device)
        row["eqot_coupling_s"] = coupling_s
        row["eqot_pairs_timed"] = pairs
        row["fm_step_s"] = row["fm_step_network_s"] + coupling_s
        Bd = min(args.div_batch, B)
        xd = x[:Bd]
        td = t[:Bd]

        def div():
            xx = xd.detach().clone().requires_grad_(True)
            v = model(xx, td)
            acc = torch.zeros(Bd, device=device)
            for i in range(n):
                for k in range(d):
                    g, = torch.autograd.grad(v[:, i, k].sum(), xx, retain_graph=True)
                    acc = acc + g[:, i, k]
            return acc

        row["divergence_s"] = timeit(div, device, repeat=1)
        row["divergence_batch"] = Bd
        row["field_per_sample_s"] = row["field_s"] / B
        row["divergence_per_sample_s"] = row["divergence_s"] / Bd
        results["systems"][name] = row
        print(f"{name}: field {row['field_s']*1e3:.2f} ms/B={B}, fm step {row['fm_step_s']*1e3:.1f} ms "
              f"(network {row['fm_step_network_s']*1e3:.1f} ms + eqot {coupling_s*1e3:.0f} ms, "
              f"{pairs} pairs timed), divergence {row['divergence_per_sample_s']*1e3:.2f} ms/sample", flush=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
