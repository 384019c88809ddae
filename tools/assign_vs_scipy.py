#!/usr/bin/env python3
"""`eqflow assign` against a Python script calling SciPy's linear_sum_assignment, whole processes.

Both sides start as fresh processes on the same cost file and do the whole job: load the .npy,
solve every [n, n] problem exactly, write the permutations as int64 [P, n] .npy. Times are wall
and CPU seconds (user + system, from the children's rusage), best of --repeats, alternating the
two sides so that both see the same machine load. The two outputs are compared: the totals of
the chosen permutations must agree (the permutations themselves may differ only between optima
of equal cost, which random real costs practically never have).

    python3 tools/assign_vs_scipy.py --eqflow build/cpu/eqflow --file /tmp/cost_20000x55.npy
    taskset -c 0 python3 tools/assign_vs_scipy.py ...     # one core (one thread each)

The cost file (uniform [0, 1) float64, --count x --n x --n, seed 1) is generated when missing;
20,000 x 55 x 55 is 484 MB. Needs numpy and scipy; never needed to build eqflow.
"""
import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

SCIPY_SCRIPT = """
import sys
import numpy as np
from scipy.optimize import linear_sum_assignment
cost = np.load(sys.argv[1])
perm = np.empty(cost.shape[:2], dtype=np.int64)
for p in range(cost.shape[0]):
    perm[p] = linear_sum_assignment(cost[p])[1]
np.save(sys.argv[2], perm)
"""


def timed(cmd, env):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, after.ru_maxrss


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eqflow", default="build/cpu/eqflow")
    ap.add_argument("--file", default="/tmp/eqflow_cost_20000x55.npy")
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--n", type=int, default=55)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--before", help="another eqflow program (e.g. an older build) to time too")
    ap.add_argument("--threads", type=int, default=0,
                    help="OMP_NUM_THREADS for eqflow (0: its default, the CPUs of the mask)")
    args = ap.parse_args()
    if not os.path.exists(args.file):
        rng = np.random.default_rng(1)
        np.save(args.file, rng.random((args.count, args.n, args.n)))
    cost = np.load(args.file, mmap_mode="r")
    import scipy
    cpus = sorted(os.sched_getaffinity(0))
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    eq_env = dict(os.environ)
    if args.threads > 0:
        eq_env["OMP_NUM_THREADS"] = str(args.threads)
    out_dir = tempfile.mkdtemp(prefix="eqflow_assign_")
    eq_out, sp_out = os.path.join(out_dir, "eq.npy"), os.path.join(out_dir, "sp.npy")
    best = {"eqflow": (1e9, 1e9), "scipy": (1e9, 1e9)}
    if args.before:
        best["before"] = (1e9, 1e9)
    for _ in range(args.repeats):
        if args.before:
            w, c, _ = timed([args.before, "assign", "--in", args.file, "--out", eq_out,
                             "--device", "cpu"], eq_env)
            best["before"] = min(best["before"], (w, c))
        w, c, _ = timed([args.eqflow, "assign", "--in", args.file, "--out", eq_out,
                         "--device", "cpu"], eq_env)
        best["eqflow"] = min(best["eqflow"], (w, c))
        w, c, _ = timed([sys.executable, "-c", SCIPY_SCRIPT, args.file, sp_out], env)
        best["scipy"] = min(best["scipy"], (w, c))
    pe, ps = np.load(eq_out), np.load(sp_out)
    rows = np.arange(cost.shape[1])
    te = np.array([cost[p][rows, pe[p]].sum() for p in range(cost.shape[0])])
    ts = np.array([cost[p][rows, ps[p]].sum() for p in range(cost.shape[0])])
    worst = float(np.max(np.abs(te - ts) / ts))
    same = float(np.mean(np.all(pe == ps, axis=1)))
    for f in (eq_out, sp_out):
        os.unlink(f)
    os.rmdir(out_dir)
    size_mb = os.path.getsize(args.file) / 1e6
    print(f"{args.file}: {cost.shape[0]} problems of {cost.shape[1]}x{cost.shape[2]} "
          f"{cost.dtype}, {size_mb:.0f} MB; CPUs {cpus}; load average {os.getloadavg()[0]:.1f}; "
          f"scipy {scipy.__version__}, numpy {np.__version__}; best of {args.repeats}")
    for side in best:
        w, c = best[side]
        print(f"  {side:7} whole process: {w:6.2f} s wall, {c:6.2f} s CPU")
    print(f"  scipy/eqflow: {best['scipy'][0] / best['eqflow'][0]:.2f}x wall, "
          f"{best['scipy'][1] / best['eqflow'][1]:.2f}x CPU")
    if args.before:
        print(f"  before/eqflow: {best['before'][0] / best['eqflow'][0]:.2f}x wall, "
              f"scipy/before: {best['scipy'][0] / best['before'][0]:.2f}x wall")
    print(f"  same permutation in {same * 100:.2f}% of the problems; worst relative total "
          f"difference {worst:.1e}")
    if worst > 1e-12:
        sys.exit("the totals differ: one side is not optimal")


if __name__ == "__main__":
    main()
