#!/usr/bin/env python3
"""eqflow's CPU eqot coupling against the reference implementation's way, side by side in one run.

The reference code couples a batch per pair (i, j) of its B^2 pairs: SciPy's
linear_sum_assignment on the squared particle distances, then Kabsch (SVD) of the permuted x1_j
onto x0_i, then one B x B linear_sum_assignment on the aligned costs. This script times that,
all B^2 pairs (no sampling), then runs bench/bench_assignment's BM_Coupling_Eqot*_CPU cases
(Google Benchmark) on the same CPUs, and prints the ratios. Pin it for the one-core numbers:

    taskset -c 0 python3 tools/eqot_vs_scipy.py --bench build/cpu/bench/bench_assignment

CPU seconds on both sides by default (steadier on a shared machine); --clock wall for wall time.
eqflow's eqot (principal-axes starts and a refinement round per start, eqflow/coupling.h) does
more work per pair than the one-start recipe SciPy's side runs; EqotReference is eqflow on that
same recipe (identity start, one Hungarian + Kabsch per pair), so eqot / EqotReference is what
the rotation-invariant starts cost; EqotStarts1 / EqotStarts2 search only the 1 or 2 best-scored
starts (CouplingOptions::max_starts, `eqflow train --eqot-starts`), still invariant. DW4 (2D, 4 particles) runs the exhaustive alignment by
default (every permutation, closed-form rotation: the exact minimum); EqotSearch is DW4 on the
start-and-refine search it replaced. Needs numpy and scipy; never needed to build eqflow.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from scipy.optimize import linear_sum_assignment

# system: (n, d, batch or None for --batch). LJ55 at B = 64, as bench_assignment runs it.
SIZES = {"dw4": (4, 2, None), "lj13": (13, 3, None), "lj55": (55, 3, 64)}


def kabsch(p, q):
    """Rotation R (det +1) minimising |p - q R^T|; p, q centred [n, d] (tools/bench_torch.py)."""
    h = q.T @ p
    u, _, vt = np.linalg.svd(h)
    s = np.eye(p.shape[1])
    s[-1, -1] = np.sign(np.linalg.det(vt.T @ u.T))
    return vt.T @ s @ u.T


def scipy_eqot(x0, x1):
    """The whole coupling of a batch the reference code's way; returns the pairing."""
    B = x0.shape[0]
    m = np.empty((B, B))
    for i in range(B):
        for j in range(B):
            cost = ((x0[i][:, None, :] - x1[j][None, :, :]) ** 2).sum(-1)
            _, col = linear_sum_assignment(cost)
            x1p = x1[j][col]
            aligned = x1p @ kabsch(x0[i], x1p).T
            m[i, j] = ((x0[i] - aligned) ** 2).sum()
    return linear_sum_assignment(m)[1]


def run_bench(binary, clock, repetitions):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    cmd = [binary,
           "--benchmark_filter=BM_Coupling_Eqot(Reference|Search|Starts1|Starts2)?_CPU/(dw4|lj13|lj55)/",
           f"--benchmark_out={path}", "--benchmark_out_format=json",
           f"--benchmark_repetitions={repetitions}"]
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    with open(path) as f:
        data = json.load(f)
    os.unlink(path)
    scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}
    out = {}
    for b in data["benchmarks"]:
        if b.get("run_type") == "aggregate":
            continue
        kind = ("eqot" if b["name"].startswith("BM_Coupling_Eqot_") else
                "eqot_search" if b["name"].startswith("BM_Coupling_EqotSearch_") else
                "eqot_starts1" if b["name"].startswith("BM_Coupling_EqotStarts1_") else
                "eqot_starts2" if b["name"].startswith("BM_Coupling_EqotStarts2_") else
                "eqot_reference")
        system = b["name"].split("/")[1]
        t = (b["cpu_time"] if clock == "cpu" else b["real_time"]) * scale[b["time_unit"]]
        out[(kind, system)] = min(out.get((kind, system), 1e9), t)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", default="build/cpu/bench/bench_assignment")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many, both sides")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    ap.add_argument("--before", help="another bench_assignment (e.g. an older build) to time too")
    ap.add_argument("--out", help="write the numbers as JSON here")
    args = ap.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    cpus = sorted(os.sched_getaffinity(0))
    rng = np.random.default_rng(4)
    scipy_s = {}
    for system, (n, d, batch) in SIZES.items():
        batch = batch or args.batch
        x0 = rng.normal(size=(batch, n, d))
        x1 = 0.7 * rng.normal(size=(batch, n, d))
        x0 -= x0.mean(axis=1, keepdims=True)
        x1 -= x1.mean(axis=1, keepdims=True)
        best = float("inf")
        for _ in range(args.repeats):
            t0 = clock()
            scipy_eqot(x0, x1)
            best = min(best, clock() - t0)
        scipy_s[system] = best
        print(f"{system}: SciPy way {best:.3f} s", file=sys.stderr)
    eq = run_bench(args.bench, args.clock, args.repeats)
    before = run_bench(args.before, args.clock, args.repeats) if args.before else {}
    import scipy
    print(f"\neqot coupling, B = {args.batch} (LJ55: 64); CPUs {cpus}; {args.clock} seconds, best of "
          f"{args.repeats}; load average {os.getloadavg()[0]:.1f}; scipy {scipy.__version__}")
    print(f"{'system':6} {'eqflow eqot':>12} {'one-start':>10} {'SciPy way':>10} "
          f"{'SciPy/eqot':>11} {'starts cost':>12}")
    rows = []
    for system in SIZES:
        e, r, s = eq[("eqot", system)], eq[("eqot_reference", system)], scipy_s[system]
        row = {"system": system, "eqot_s": e, "one_start_s": r, "scipy_s": s}
        line = (f"{system:6} {e * 1e3:10.1f}ms {r * 1e3:8.1f}ms {s * 1e3:8.0f}ms {s / e:10.1f}x "
                f"{e / r:11.1f}x")
        for k in (1, 2):  # the search from the k best-scored starts only (max_starts)
            if (f"eqot_starts{k}", system) in eq:
                t = eq[(f"eqot_starts{k}", system)]
                row[f"starts{k}_s"] = t
                line += f"   {k} start{'s' if k > 1 else ''}: {t * 1e3:.1f}ms (SciPy/it {s / t:.1f}x)"
        if ("eqot_search", system) in eq:  # DW4: the search the exhaustive alignment replaced
            row["search_s"] = eq[("eqot_search", system)]
            line += f"   search: {row['search_s'] * 1e3:.1f}ms"
        if ("eqot", system) in before:
            b = before[("eqot", system)]
            row["before_eqot_s"] = b
            line += f"   before: {b * 1e3:.1f}ms ({b / e:.1f}x slower, SciPy/before {s / b:.1f}x)"
        rows.append(row)
        print(line)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"cpus": cpus, "clock": args.clock, "batch": args.batch, "rows": rows}, f,
                      indent=2)


if __name__ == "__main__":
    main()
