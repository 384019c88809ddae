#!/usr/bin/env python3
"""SciPy's linear_sum_assignment time per matrix, to compare with eqflow's CPU solver.

Times scipy.optimize.linear_sum_assignment on the same distribution as bench/bench_assignment.cpp
(BM_Assignment_CPU): uniform random [0, 1) float64 square matrices, one call per matrix (SciPy
has no batched call), single thread. Reports the median over repeats of the mean time per matrix,
as wall time and as process CPU time (the latter is what to compare with Google Benchmark's CPU
column on a shared machine). Needs numpy and scipy (`pip install scipy numpy`); never needed to
build eqflow.

usage: python3 tools/scipy_lsa_bench.py [--sizes 4 13 22 55] [--count 2000] [--repeats 5]
"""
import argparse
import statistics
import time

import numpy as np
from scipy.optimize import linear_sum_assignment


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4, 13, 22, 55])
    ap.add_argument("--count", type=int, default=2000, help="matrices per repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    import scipy
    print(f"scipy {scipy.__version__}, numpy {np.__version__}")
    for n in args.sizes:
        mats = rng.random((args.count, n, n))
        walls, cpus = [], []
        for _ in range(args.repeats):
            w0, c0 = time.perf_counter(), time.process_time()
            for m in mats:
                linear_sum_assignment(m)
            walls.append((time.perf_counter() - w0) / args.count)
            cpus.append((time.process_time() - c0) / args.count)
        print(f"n={n:4d}: {statistics.median(walls) * 1e6:9.2f} us/matrix wall, "
              f"{statistics.median(cpus) * 1e6:9.2f} us/matrix cpu, "
              f"{1.0 / statistics.median(cpus):12.0f} matrices/s (cpu)")


if __name__ == "__main__":
    main()
