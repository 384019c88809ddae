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
//
// block_solve_assignment is the same solver on a block of kBlockLsaThreads threads, for one
// large problem (the B x B assignment of a coupling): thread t owns the columns t, t + 256, ...
// and keeps their state (v, spc, scanned, row4col) in registers; the argmin of a search step is
// the warp butterfly, then one barrier and a read of the 8 warps' winners. The winner is the
// minimum of the same total order, computed with the same arithmetic, so both solvers return
// the same assignment bit for bit, ties included.
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

// The augmentation of both solvers, on one thread: flip the matching along the shortest path
// that ends at the free column `sink` and starts at the unmatched row `cur`.
__device__ inline void augment_along_path(const int* path, int* row4col, int* col4row, int sink,
                                          int cur) {
    int j = sink;
    for (;;) {
        const int r = path[j];
        row4col[j] = r;
        const int prev = col4row[r];
        col4row[r] = j;
        j = prev;
        if (r == cur) break;
    }
}

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
        if (lane == 0) augment_along_path(s.path, s.row4col, s.col4row, sink, cur);
        __syncwarp();
    }
    return true;
}

// ---- The block-wide solver (one large problem per block) -----------------------------------

// 256 threads: at n = 1024 a thread owns 4 columns, whose loads are independent and issue
// back to back, so a search step costs about what one column does, while the cross-warp round
// stays at 8 winners and the barrier at 8 warps (1024 threads would halve neither the loads'
// latency nor the shuffles, and double the warps a barrier waits for).
constexpr int kBlockLsaThreads = 256;
constexpr int kBlockLsaWarps = kBlockLsaThreads / 32;
constexpr int kBlockLsaMaxColumns = 4;  // per thread: n <= 1024
constexpr int kBlockLsaMaxN = kBlockLsaThreads * kBlockLsaMaxColumns;

// Per-block state in shared memory: what more than one thread reads. The per-column state a
// thread owns (v, spc, scanned, its columns' row4col) lives in its registers.
struct BlockLsaState {
    double* red_val;  // [2][kBlockLsaWarps] the warps' winners of a block argmin, two halves
    int* red_key;     // [2][kBlockLsaWarps]
    double* u;        // [n] row potentials (a search step reads the current row's)
    int* path;        // [n] row that reached column j (walked by one thread at the flip)
    int* row4col;     // [n]
    int* col4row;     // [n]
    int half;         // which half of red_* the next block reduction writes
};

__host__ __device__ inline std::size_t block_lsa_state_bytes(int n) {
    const std::size_t b = 2 * kBlockLsaWarps * (sizeof(double) + sizeof(int)) +
                          static_cast<std::size_t>(n) * (sizeof(double) + 3 * sizeof(int));
    return (b + 15) / 16 * 16;
}
__device__ inline BlockLsaState block_lsa_state(unsigned char* base, int n) {
    BlockLsaState s;
    s.red_val = reinterpret_cast<double*>(base);
    s.u = s.red_val + 2 * kBlockLsaWarps;
    s.red_key = reinterpret_cast<int*>(s.u + n);
    s.path = s.red_key + 2 * kBlockLsaWarps;
    s.row4col = s.path + n;
    s.col4row = s.row4col + n;
    s.half = 0;
    return s;
}

// The minimum of (value, key) over the block, in every thread; all threads must call it. One
// barrier: lane 0 of each warp writes its warp's winner, then every thread reads the 8 winners
// (broadcast reads). The two halves of red_* alternate, so the next reduction's writes cannot
// overwrite winners a thread has yet to read: those writes come after the next barrier, which
// every thread reaches only after its reads here.
__device__ inline void block_argmin(double& value, int& key, BlockLsaState& s) {
    warp_argmin(value, key);
    double* vals = s.red_val + s.half * kBlockLsaWarps;
    int* keys = s.red_key + s.half * kBlockLsaWarps;
    if ((threadIdx.x & 31) == 0) {
        vals[threadIdx.x >> 5] = value;
        keys[threadIdx.x >> 5] = key;
    }
    __syncthreads();
    value = vals[0];
    key = keys[0];
#pragma unroll
    for (int w = 1; w < kBlockLsaWarps; ++w) lsa_take_min(value, key, vals[w], keys[w]);
    s.half ^= 1;
}

// Whether pred holds in any thread of the block, in every thread; one barrier, as above.
__device__ inline bool block_any(bool pred, BlockLsaState& s) {
    const int any_in_warp = __any_sync(0xffffffffu, pred);
    int* keys = s.red_key + s.half * kBlockLsaWarps;
    if ((threadIdx.x & 31) == 0) keys[threadIdx.x >> 5] = any_in_warp;
    __syncthreads();
    bool any = false;
#pragma unroll
    for (int w = 0; w < kBlockLsaWarps; ++w) any |= keys[w] != 0;
    s.half ^= 1;
    return any;
}

// c[k] = cost(i, j) for the thread's columns j = threadIdx.x + k * kBlockLsaThreads < n, all
// loads issued before any is used: their latencies overlap (behind the per-column branches of
// the search they would follow one another).
template <int kCols, class CostFn>
__device__ inline void load_row_columns(const CostFn& cost, int i, int n, double (&c)[kCols]) {
#pragma unroll
    for (int k = 0; k < kCols; ++k) {
        const int j = threadIdx.x + k * kBlockLsaThreads;
        c[k] = j < n ? cost(i, j) : 0.0;
    }
}

// warp_solve_assignment on a block of kBlockLsaThreads threads (all must call it, with
// blockDim.x == kBlockLsaThreads): thread t owns the columns j = t + k * kBlockLsaThreads,
// k < kCols, with n <= kCols * kBlockLsaThreads. The same steps, tie rule and arithmetic as the
// warp solver, so the same assignment bit for bit. Barriers: one per search step (the argmin),
// two per augmenting path (before and after the flip, which one thread walks), one per row of
// the row reduction and two more in the initialisation. Returns true when a finite assignment
// exists; it is then in s.col4row (visible to all threads).
template <int kCols, class CostFn>
__device__ bool block_solve_assignment(const CostFn& cost, int n, BlockLsaState& s) {
    const int tid = threadIdx.x;
    const double inf = __longlong_as_double(0x7ff0000000000000ll);
    const int kKeyMask = (1 << 30) - 1;
    // Register arrays indexed only by unrolled loop counters, so that they stay in registers.
    double v[kCols];    // column potentials
    double spc[kCols];  // shortest-path costs of the current search
    int r4c[kCols];     // the thread's entries of s.row4col (a copy, refreshed after each flip)
    // Column reduction: each thread the minima of its columns, one row at a time, so that a
    // warp reads a row's consecutive entries (coalesced) and a thread's kCols loads are
    // independent.
    bool no_finite = false;
#pragma unroll
    for (int k = 0; k < kCols; ++k) {
        v[k] = inf;
        spc[k] = inf;
        r4c[k] = -1;
    }
    for (int i = 0; i < n; ++i) {
#pragma unroll
        for (int k = 0; k < kCols; ++k) {
            const int j = tid + k * kBlockLsaThreads;
            if (j < n) v[k] = fmin(v[k], cost(i, j));
        }
    }
#pragma unroll
    for (int k = 0; k < kCols; ++k) {
        const int j = tid + k * kBlockLsaThreads;
        if (j < n) {
            no_finite |= !(v[k] < inf);
            s.row4col[j] = -1;
            s.col4row[j] = -1;
        }
    }
    if (block_any(no_finite, s)) return false;
    // Row reduction: one block argmin per row; the owner of the winning column records the
    // match (in its registers and in shared memory), thread 0 the row's potential.
    for (int i = 0; i < n; ++i) {
        double c[kCols];
        load_row_columns<kCols>(cost, i, n, c);
        double best = inf;
        int best_key = 0x7fffffff;
#pragma unroll
        for (int k = 0; k < kCols; ++k) {
            const int j = tid + k * kBlockLsaThreads;
            if (j < n) lsa_take_min(best, best_key, c[k] - v[k], ((r4c[k] >= 0) << 30) | j);
        }
        block_argmin(best, best_key, s);
        if (!(best < inf)) return false;  // block-uniform
        const int j = best_key & kKeyMask;
        if (tid == 0) s.u[i] = best;
#pragma unroll
        for (int k = 0; k < kCols; ++k) {
            if (tid + k * kBlockLsaThreads == j && r4c[k] < 0) {
                r4c[k] = i;
                s.row4col[j] = i;
                s.col4row[i] = j;
            }
        }
    }
    __syncthreads();  // u, row4col, col4row of the reduction, before the searches read them
    for (int cur = 0; cur < n; ++cur) {
        if (s.col4row[cur] >= 0) continue;  // matched by the initialisation (block-uniform)
        unsigned scanned = 0;               // bit k: column tid + k * kBlockLsaThreads
#pragma unroll
        for (int k = 0; k < kCols; ++k) spc[k] = inf;
        double min_val = 0.0;
        int i = cur;
        int sink = -1;
        while (sink < 0) {
            // u and row4col do not change during a search; path[j] is written by j's owner only.
            const double ui = s.u[i];
            double c[kCols];
            load_row_columns<kCols>(cost, i, n, c);
            double best = inf;
            int best_key = 0x7fffffff;
#pragma unroll
            for (int k = 0; k < kCols; ++k) {
                const int j = tid + k * kBlockLsaThreads;
                if (j >= n || ((scanned >> k) & 1u)) continue;
                const double r = min_val + c[k] - ui - v[k];
                if (r < spc[k]) {
                    s.path[j] = i;
                    spc[k] = r;
                }
                lsa_take_min(best, best_key, spc[k], ((r4c[k] >= 0) << 30) | j);
            }
            block_argmin(best, best_key, s);
            if (!(best < inf)) return false;  // block-uniform: no finite augmenting path
            min_val = best;
            const int j = best_key & kKeyMask;
#pragma unroll
            for (int k = 0; k < kCols; ++k)
                if (tid + k * kBlockLsaThreads == j) scanned |= 1u << k;
            const int r4 = s.row4col[j];
            if (r4 < 0) {
                sink = j;
            } else {
                i = r4;
            }
        }
        // Lazy dual update: each thread its scanned columns and the rows matched to them
        // (distinct columns have distinct rows; cur is unmatched, so thread 0's write is apart).
#pragma unroll
        for (int k = 0; k < kCols; ++k) {
            if (!((scanned >> k) & 1u)) continue;
            const double delta = min_val - spc[k];
            v[k] -= delta;
            if (tid + k * kBlockLsaThreads != sink) s.u[r4c[k]] += delta;
        }
        if (tid == 0) s.u[cur] += min_val;
        // Every thread has read row4col[sink] (the last step) before the flip rewrites it, and
        // the path entries of all steps are visible to the thread that walks them.
        __syncthreads();
        if (tid == 0) augment_along_path(s.path, s.row4col, s.col4row, sink, cur);
        __syncthreads();  // the flip, before the refresh and the next cur's col4row read
#pragma unroll
        for (int k = 0; k < kCols; ++k) {
            const int j = tid + k * kBlockLsaThreads;
            if (j < n) r4c[k] = s.row4col[j];
        }
    }
    return true;
}

}  // namespace eqflow::cuda
