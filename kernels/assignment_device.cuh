// kernels/assignment_device.cuh: the warp-wide shortest-augmenting-path solver, shared by the
// batched assignment kernel and the coupling kernels. Device code only (include from .cu files).
//
// The same algorithm as the CPU reference (src/cpu/assignment_cpu.cpp): the column and row
// reductions, then one Dijkstra search per unmatched row over the reduced costs
// c[i][j] - u[i] - v[j], lazy dual update, flip along the path. The warp's lane l owns the
// columns j = l, l + 32, l + 64, ...: it alone reads and writes their spc / path / scanned
// entries during a search, so a search step needs no barrier, only the warp argmin (five
// butterfly shuffle rounds on (value, key), key = (column matched) << 30 | j, which prefers free
// columns on ties and is a total order, so all lanes agree on the winner). Potentials and path
// costs are double whatever the cost type.
#pragma once

#include <cstddef>
#include <cstdint>

namespace eqflow::cuda {

// Per-warp state, n entries each; in shared memory when it fits (any address space works).
struct WarpLsaState {
    double* u;
    double* v;
    double* spc;
    int* path;
    int* row4col;
    int* col4row;
    unsigned char* scanned;
};

constexpr std::size_t kWarpLsaStateBytesPerColumn = 3 * sizeof(double) + 3 * sizeof(int) + 1;

// Carves the state for n columns out of `base` (8-byte aligned); returns the bytes used
// (a multiple of 16).
__host__ __device__ inline std::size_t warp_lsa_state_bytes(int n) {
    const std::size_t b = static_cast<std::size_t>(n) * kWarpLsaStateBytesPerColumn;
    return (b + 15) / 16 * 16;
}
__device__ inline WarpLsaState warp_lsa_state(unsigned char* base, int n) {
    WarpLsaState s;
    s.u = reinterpret_cast<double*>(base);
    s.v = s.u + n;
    s.spc = s.v + n;
    s.path = reinterpret_cast<int*>(s.spc + n);
    s.row4col = s.path + n;
    s.col4row = s.row4col + n;
    s.scanned = reinterpret_cast<unsigned char*>(s.col4row + n);
    return s;
}

// A cost matrix held row-major [n][n] in memory (shared or global).
template <class T>
struct MatrixCost {
    const T* c;
    int n;
    __device__ double operator()(int i, int j) const {
        return static_cast<double>(c[static_cast<int64_t>(i) * n + j]);
    }
};

// (value, key) <- the smaller of it and (ov, ok) in the order (value, key): a total order, since
// values are never NaN and keys are distinct, so any reduction tree finds the same minimum.
__device__ inline void lsa_take_min(double& value, int& key, double ov, int ok) {
    if (ov < value || (ov == value && ok < key)) {
        value = ov;
        key = ok;
    }
}

// The minimum of (value, key) over the warp, in every lane.
__device__ inline void warp_argmin(double& value, int& key) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        const double ov = __shfl_xor_sync(0xffffffffu, value, off);
        const int ok = __shfl_xor_sync(0xffffffffu, key, off);
        lsa_take_min(value, key, ov, ok);
    }
}

// Solves one n x n problem with the whole warp (all 32 lanes must call it). cost(i, j) returns
// the price of giving column j to row i as a double, never NaN / -inf (+inf = forbidden); it may
// read a stored matrix (MatrixCost) or compute the price on the fly. Returns true when a finite
// assignment exists; the assignment is then in s.col4row (visible to all lanes on return).
template <class CostFn>
__device__ bool warp_solve_assignment(const CostFn& cost, int n, WarpLsaState s) {
    const int lane = threadIdx.x & 31;
    const double inf = __longlong_as_double(0x7ff0000000000000ll);
    // Initial duals and partial matching, as in the CPU reference (Jonker-Volgenant's column and
    // row reductions): v[j] = column minimum (each lane its columns), u[i] = row minimum of the
    // reduced costs (warp argmin per row, free columns first), and the row takes that column when
    // it is free. A column or row without a finite entry makes the problem infeasible at once.
    bool no_finite = false;
    for (int j = lane; j < n; j += 32) {
        double m = inf;
        for (int i = 0; i < n; ++i) m = fmin(m, cost(i, j));
        no_finite |= !(m < inf);
        s.v[j] = m;
        s.row4col[j] = -1;
        s.col4row[j] = -1;
    }
    if (__any_sync(0xffffffffu, no_finite)) return false;
    __syncwarp();
    for (int i = 0; i < n; ++i) {
        double best = inf;
        int best_key = 0x7fffffff;
        for (int j = lane; j < n; j += 32) {
            const double r = cost(i, j) - s.v[j];
            lsa_take_min(best, best_key, r, ((s.row4col[j] >= 0) << 30) | j);
        }
        warp_argmin(best, best_key);
        if (!(best < inf)) return false;  // warp-uniform
        const int j = best_key & ((1 << 30) - 1);
        if (lane == 0) {
            s.u[i] = best;
            if (s.row4col[j] < 0) {
                s.row4col[j] = i;
                s.col4row[i] = j;
            }
        }
        __syncwarp();
    }
    for (int cur = 0; cur < n; ++cur) {
        if (s.col4row[cur] >= 0) continue;  // matched by the initialisation (warp-uniform)
        for (int j = lane; j < n; j += 32) {
            s.spc[j] = inf;
            s.scanned[j] = 0;
        }
        double min_val = 0.0;
        int i = cur;
        int sink = -1;
        while (sink < 0) {
            const double ui = s.u[i];
            double best = inf;
            int best_key = 0x7fffffff;
            for (int j = lane; j < n; j += 32) {
                if (s.scanned[j]) continue;
                const double r = min_val + cost(i, j) - ui - s.v[j];
                double sj = s.spc[j];
                if (r < sj) {
                    s.path[j] = i;
                    s.spc[j] = r;
                    sj = r;
                }
                lsa_take_min(best, best_key, sj, ((s.row4col[j] >= 0) << 30) | j);
            }
            warp_argmin(best, best_key);
            if (!(best < inf)) return false;  // warp-uniform: no finite augmenting path
            min_val = best;
            const int j = best_key & ((1 << 30) - 1);
            if ((j & 31) == lane) s.scanned[j] = 1;
            const int r4 = s.row4col[j];
            if (r4 < 0) {
                sink = j;
            } else {
                i = r4;
            }
        }
        // Lazy dual update over the scanned columns and the rows matched to them; each lane its
        // own columns, and distinct columns have distinct matched rows (no write conflicts).
        for (int j = lane; j < n; j += 32) {
            if (!s.scanned[j]) continue;
            const double delta = min_val - s.spc[j];
            s.v[j] -= delta;
            if (j != sink) s.u[s.row4col[j]] += delta;
        }
        if (lane == 0) s.u[cur] += min_val;
        __syncwarp();
        if (lane == 0) {
            int j = sink;
            for (;;) {
                const int r = s.path[j];
                s.row4col[j] = r;
                const int prev = s.col4row[r];
                s.col4row[r] = j;
                j = prev;
                if (r == cur) break;
            }
        }
        __syncwarp();
    }
    return true;
}

}  // namespace eqflow::cuda
