// kernels/coupling.cu: the fm / ot / eqot couplings on the GPU (CPU reference:
// src/cpu/coupling_cpu.cpp; the contract: eqflow/coupling.h).
//
// Layout: x0, x1, x1_paired [B][n][D] row-major (T = float or double; D = 2 or 3), pairing [B]
// int64, cost [B] double. Workspace (device, 256-byte aligned pieces): M [B][B] double (pair
// costs), sigma [B] int64, the assignment flags, types [n] int32 (when typed).
//
//   ot    pair_distance_kernel: one warp per pair (i, j), lanes over the n*D coordinates,
//         M_ij = |x0_i - x1_j|^2 (double); then the B x B assignment (kernels/assignment.cu:
//         one block of 256 threads for B >= 128, one warp below);
//         then gather_kernel (one warp per i) writes x1_paired[i] = x1[sigma(i)] and cost[i].
//   fm    gather_kernel with sigma = identity.
//   eqot  eqot_pair_kernel over all B^2 pairs: one warp per pair. The warp stages x0_i and x1_j
//         (as double) in shared memory and runs the search of the CPU reference: principal-axes
//         starts (+ the identity safety net), each refined by rounds of Hungarian on the rotated
//         x1_j (warp_solve_assignment with the squared distances computed on the fly from shared
//         memory, +inf across types: no n x n matrix is stored) and Kabsch (the shared double
//         math of src/cpu/kabsch_cpu.h, H reduced by warp shuffles). It writes M_ij; after the
//         B x B assignment on M, the same kernel runs once more for the B chosen pairs and writes
//         the aligned x1_paired[i] = R P x1[sigma(i)], cost[i] and pairing[i] (the same code on the
//         same inputs, hence the alignment M was built from).
//         D = 2 with n <= 5 (DW4) and CouplingOptions::exhaustive: no search;
//         eqot_exhaustive_kernel, one thread per pair, walks all permutations with their
//         closed-form rotations (src/common/eqot_exhaustive.h, shared with the CPU, every
//         operation rounded once, so M_ij is the CPU's bit for bit), in the same two passes.
// Shared memory per warp (eqot): 3 n D doubles (x0, x1, rotated x1) + 3 n ints (types, best and
// previous assignment) + ~37 n bytes of solver state: ~6.7 KiB at n = 55, D = 3; up to 4 warps
// per block within the 48 KiB default budget.
// Work per eqot pair: (starts x rounds) assignments of size n (O(n^2)..O(n^3) each) + Kabsch.
#include <algorithm>
#include <cstdint>

#include "common/eqot_exhaustive.h"
#include "common/eqot_starts.h"
#include "common/kabsch_math.h"
#include "kernels/assignment.cuh"
#include "kernels/assignment_device.cuh"
#include "kernels/coupling.cuh"
#include "kernels/cuda_check.cuh"
#include "kernels/device_compat.cuh"

namespace eqflow::cuda {

namespace {
constexpr int kWarpsPerBlock = 4;
constexpr std::size_t kSmemBudget = 48 * 1024;
constexpr std::size_t kAlign = 256;
// The Kabsch / principal-axes Jacobi code inlined into the eqot kernel would take ~250 registers
// (8 warps per SM); capping them (64 per thread at 8 blocks of 4 warps) keeps the latency-bound
// solver loop at full occupancy and moves the rarely run eigen-solver into local memory.
constexpr int kEqotMinBlocksPerSm = 8;
constexpr int kExhaustiveThreads = 128;  // eqot_exhaustive_kernel: one thread per pair

std::size_t align_up(std::size_t b) {
    return (b + kAlign - 1) / kAlign * kAlign;
}

__device__ inline double warp_sum(double v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

__device__ inline double inf_double() {
    return __longlong_as_double(0x7ff0000000000000ll);
}

// M_ij = |x0_i - x1_j|^2 for all pairs; one warp per pair.
template <class T>
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    pair_distance_kernel(const T* __restrict__ x0, const T* __restrict__ x1, int B, int nd,
                         double* __restrict__ m) {
    const int64_t q = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
    if (q >= static_cast<int64_t>(B) * B) return;
    const int lane = threadIdx.x & 31;
    const int64_t i = q / B, j = q % B;
    double s = 0.0;
    for (int k = lane; k < nd; k += 32) {
        const double diff =
            static_cast<double>(x0[i * nd + k]) - static_cast<double>(x1[j * nd + k]);
        s += diff * diff;
    }
    s = warp_sum(s);
    if (lane == 0) m[q] = s;
}

// x1_paired[i] = x1[sigma(i)] (sigma == nullptr: identity), cost[i], pairing[i]; one warp per i.
template <class T>
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    gather_kernel(const T* __restrict__ x0, const T* __restrict__ x1, int B, int nd,
                  const int64_t* __restrict__ sigma, T* __restrict__ x1_paired,
                  int64_t* __restrict__ pairing, double* __restrict__ cost) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
    if (i >= B) return;
    const int lane = threadIdx.x & 31;
    const int64_t j = sigma ? sigma[i] : i;
    double s = 0.0;
    for (int k = lane; k < nd; k += 32) {
        const T v = x1[j * nd + k];
        x1_paired[i * nd + k] = v;
        const double diff = static_cast<double>(x0[i * nd + k]) - static_cast<double>(v);
        s += diff * diff;
    }
    s = warp_sum(s);
    if (lane == 0) {
        if (cost) cost[i] = s;
        if (pairing) pairing[i] = j;
    }
}

struct EqotParams {
    int allow_reflection;
    int frame_starts;
    int refine_iterations;
    int max_starts;  // 0: every frame start; k: the k best by eqot_starts' nearest-neighbour score
};

// Squared distance between particle a of x0 and particle b of the rotated x1, +inf across types.
template <int D>
struct PairCost {
    const double* x0;
    const double* y;
    const int* types;
    __device__ double operator()(int a, int b) const {
        if (types && types[a] != types[b]) return inf_double();
        double s = 0.0;
#pragma unroll
        for (int k = 0; k < D; ++k) {
            const double diff = x0[a * D + k] - y[b * D + k];
            s += diff * diff;
        }
        return s;
    }
};

template <int D>
std::size_t eqot_warp_bytes(int n) {
    const std::size_t own = 3 * static_cast<std::size_t>(n) * D * sizeof(double) +
                            3 * static_cast<std::size_t>(n) * sizeof(int);
    return (own + 15) / 16 * 16 + warp_lsa_state_bytes(n);
}

// One warp per pair. sigma == nullptr: all B^2 pairs (i = q / B, j = q % B), writes m[q].
// Otherwise pairs (i, sigma[i]) for i < B, writes x1_paired[i], cost[i], pairing[i].
template <class T, int D>
__global__ void __launch_bounds__(32 * kWarpsPerBlock, kEqotMinBlocksPerSm)
    eqot_pair_kernel(const T* __restrict__ x0, const T* __restrict__ x1, int B, int n,
                     const int* __restrict__ types, EqotParams p, const int64_t* __restrict__ sigma,
                     double* __restrict__ m, T* __restrict__ x1_paired, double* __restrict__ cost,
                     int64_t* __restrict__ pairing, std::size_t warp_bytes) {
    EQFLOW_DYNAMIC_SHARED(unsigned char, smem_raw);
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int64_t q = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + warp;
    if (q >= (sigma ? static_cast<int64_t>(B) : static_cast<int64_t>(B) * B))
        return;  // warp-uniform
    const int64_t i = sigma ? q : q / B;
    const int64_t j = sigma ? sigma[q] : q % B;
    const int nd = n * D;

    unsigned char* base = smem_raw + warp * warp_bytes;
    double* xs0 = reinterpret_cast<double*>(base);  // [n][D] x0_i
    double* xs1 = xs0 + nd;                         // [n][D] x1_j
    double* ys = xs1 + nd;                          // [n][D] R x1_j
    int* ts = reinterpret_cast<int*>(ys + nd);      // [n] types
    int* best_perm = ts + n;                        // [n]
    int* prev = best_perm + n;                      // [n]
    const WarpLsaState st =
        warp_lsa_state(base + (3 * static_cast<std::size_t>(nd) * sizeof(double) +
                               3 * static_cast<std::size_t>(n) * sizeof(int) + 15) /
                                  16 * 16,
                       n);
    for (int k = lane; k < nd; k += 32) {
        xs0[k] = static_cast<double>(x0[i * nd + k]);
        xs1[k] = static_cast<double>(x1[j * nd + k]);
    }
    // best_perm starts as the identity: a pair whose search finds nothing finite (a NaN input)
    // still reads a permutation in the final pass (its output is NaN and the batch poisoned).
    for (int k = lane; k < n; k += 32) {
        ts[k] = types ? types[k] : 0;
        best_perm[k] = k;
    }
    __syncwarp();
    const PairCost<D> pc{xs0, ys, types ? ts : nullptr};

    double best = inf_double();
    double best_r[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1};
    // One search from start r0 (all lanes hold the same r0): rounds of Hungarian + Kabsch.
    const auto search = [&](const double* r0) {
        double r[9];
        for (int k = 0; k < D * D; ++k) r[k] = r0[k];
        for (int round = 0; round <= p.refine_iterations; ++round) {
            for (int b = lane; b < n; b += 32)
#pragma unroll
                for (int a = 0; a < D; ++a) {
                    double v = 0.0;
#pragma unroll
                    for (int c = 0; c < D; ++c) v += r[a * D + c] * xs1[b * D + c];
                    ys[b * D + a] = v;
                }
            __syncwarp();
            // Always feasible (x0 and x1 share the types) unless a coordinate is NaN: then the
            // pair keeps M_ij = +inf and the batch assignment reports the bad input.
            if (!warp_solve_assignment(pc, n, st)) return;
            bool same = round > 0;
            for (int a = lane; a < n; a += 32) same &= prev[a] == st.col4row[a];
            if (__all_sync(0xffffffffu, same)) break;
            double h[D * D];
#pragma unroll
            for (int k = 0; k < D * D; ++k) h[k] = 0.0;
            for (int a = lane; a < n; a += 32) {
                const int b = st.col4row[a];
#pragma unroll
                for (int u = 0; u < D; ++u)
#pragma unroll
                    for (int v = 0; v < D; ++v) h[u * D + v] += xs0[a * D + u] * xs1[b * D + v];
            }
#pragma unroll
            for (int k = 0; k < D * D; ++k) h[k] = warp_sum(h[k]);
            kabsch_math::best_orthogonal(h, D, p.allow_reflection != 0, r);
            double c = 0.0;
            for (int a = lane; a < n; a += 32) {
                const int b = st.col4row[a];
#pragma unroll
                for (int u = 0; u < D; ++u) {
                    double v = 0.0;
#pragma unroll
                    for (int w = 0; w < D; ++w) v += r[u * D + w] * xs1[b * D + w];
                    const double diff = xs0[a * D + u] - v;
                    c += diff * diff;
                }
            }
            c = warp_sum(c);
            const bool better = c < best;  // warp-uniform (same sum in every lane)
            for (int a = lane; a < n; a += 32) {
                if (better) best_perm[a] = st.col4row[a];
                prev[a] = st.col4row[a];
            }
            if (better) {
                best = c;
                for (int k = 0; k < D * D; ++k) best_r[k] = r[k];
            }
            __syncwarp();
        }
    };

    double identity[9];
    for (int a = 0; a < D; ++a)
        for (int b = 0; b < D; ++b) identity[a * D + b] = a == b ? 1.0 : 0.0;
    if (p.frame_starts) {
        double c0[D * D], c1[D * D];
#pragma unroll
        for (int k = 0; k < D * D; ++k) c0[k] = c1[k] = 0.0;
        for (int a = lane; a < n; a += 32)
#pragma unroll
            for (int u = 0; u < D; ++u)
#pragma unroll
                for (int v = 0; v < D; ++v) {
                    c0[u * D + v] += xs0[a * D + u] * xs0[a * D + v];
                    c1[u * D + v] += xs1[a * D + u] * xs1[a * D + v];
                }
#pragma unroll
        for (int k = 0; k < D * D; ++k) {
            c0[k] = warp_sum(c0[k]);
            c1[k] = warp_sum(c1[k]);
        }
        double f0[9], f1[9], r0[9];
        kabsch_math::principal_frame(c0, D, f0);
        kabsch_math::principal_frame(c1, D, f1);
        // Fewer starts (p.max_starts below the number of frame starts: 2^(D-1) proper ones,
        // 2^D with reflections): each frame start's nearest-neighbour score
        // (src/common/eqot_starts.h; lanes over the particles of x0, then a warp sum), and only
        // the max_starts lowest are searched (ties: the earlier start), in mask order.
        const bool fewer = p.max_starts > 0 && p.max_starts < (p.allow_reflection ? 2 : 1)
                                                                  << (D - 1);
        double score[1 << D];
        int num = 0;
        for (int mask = 0; mask < (1 << D); ++mask) {
            const double det = kabsch_math::frame_start(f0, f1, D, mask, r0);
            if (!(det > 0.0 || p.allow_reflection)) continue;
            if (fewer) {
                double s = 0.0;
                for (int a = lane; a < n; a += 32) {
                    double low = inf_double();
                    for (int b = 0; b < n; ++b) {
                        if (ts[a] != ts[b]) continue;
                        double c = 0.0;
#pragma unroll
                        for (int u = 0; u < D; ++u) {
                            double v = 0.0;
#pragma unroll
                            for (int w = 0; w < D; ++w) v += r0[u * D + w] * xs1[b * D + w];
                            const double diff = xs0[a * D + u] - v;
                            c += diff * diff;
                        }
                        low = c < low ? c : low;
                    }
                    s += low;
                }
                score[num] = warp_sum(s);
            }
            ++num;
        }
        for (int mask = 0, start = 0; mask < (1 << D); ++mask) {
            const double det = kabsch_math::frame_start(f0, f1, D, mask, r0);
            if (!(det > 0.0 || p.allow_reflection)) continue;
            const bool keep = !fewer || eqot_starts::rank_of(score, num, start) < p.max_starts;
            ++start;
            if (keep) search(r0);
        }
        double plain = 0.0;
        for (int k = lane; k < nd; k += 32) plain += (xs0[k] - xs1[k]) * (xs0[k] - xs1[k]);
        plain = warp_sum(plain);
        if (!(best <= plain)) search(identity);  // the safety net of eqflow/coupling.h
    } else {
        search(identity);
    }

    if (!sigma) {
        if (lane == 0) m[q] = best;
        return;
    }
    double c = 0.0;
    for (int a = lane; a < n; a += 32) {
        const int b = best_perm[a];
#pragma unroll
        for (int u = 0; u < D; ++u) {
            double v = 0.0;
#pragma unroll
            for (int w = 0; w < D; ++w) v += best_r[u * D + w] * xs1[b * D + w];
            x1_paired[(i * n + a) * D + u] = static_cast<T>(v);
            const double diff = xs0[a * D + u] - v;
            c += diff * diff;
        }
    }
    c = warp_sum(c);
    if (lane == 0) {
        if (cost) cost[i] = c;
        if (pairing) pairing[i] = j;
    }
}

// D = 2, n <= eqot_exhaustive::kMaxN (DW4) with CouplingOptions::exhaustive: every permutation
// with its closed-form rotation (src/common/eqot_exhaustive.h, the CPU's arithmetic rounded
// once per operation, so M_ij is the CPU's bit for bit), one thread per pair: the walk is
// sequential and tiny (at most 120 leaves over <= 10 coordinates per sample), so a warp per pair
// would repeat it in every lane. Always typed (ts holds zeros without types: the same
// permutations), which halves the fixed-size copies compiled in. sigma == nullptr: all B^2 pairs
// (i = q / B, j = q % B), writes m[q]; otherwise pairs (i, sigma[i]), writes x1_paired[i],
// cost[i], pairing[i] (the same code on the same inputs, hence the alignment M was built from).
template <class T>
__global__ void __launch_bounds__(kExhaustiveThreads)
    eqot_exhaustive_kernel(const T* __restrict__ x0, const T* __restrict__ x1, int B, int n,
                           const int* __restrict__ types, int allow_reflection,
                           const int64_t* __restrict__ sigma, double* __restrict__ m,
                           T* __restrict__ x1_paired, double* __restrict__ cost,
                           int64_t* __restrict__ pairing) {
    constexpr int kN = eqot_exhaustive::kMaxN;
    const int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (q >= (sigma ? static_cast<int64_t>(B) : static_cast<int64_t>(B) * B)) return;
    const int64_t i = sigma ? q : q / B;
    const int64_t j = sigma ? sigma[q] : q % B;
    const int nd = 2 * n;
    double xs0[2 * kN], xs1[2 * kN];
    int ts[kN], perm[kN];
    for (int k = 0; k < nd; ++k) {
        xs0[k] = static_cast<double>(x0[i * nd + k]);
        xs1[k] = static_cast<double>(x1[j * nd + k]);
    }
    for (int a = 0; a < n; ++a) ts[a] = types ? types[a] : 0;
    double r[4];
    const double best = eqot_exhaustive::align_2d(xs0, xs1, n, ts, allow_reflection != 0, perm,
                                                  sigma ? r : nullptr);
    if (!sigma) {
        m[q] = best;
        return;
    }
    double c = 0.0;
    for (int a = 0; a < n; ++a) {
        const int b = perm[a];
        for (int u = 0; u < 2; ++u) {
            double v = 0.0;  // as eqot_pair_kernel's output pass
            for (int w = 0; w < 2; ++w) v += r[u * 2 + w] * xs1[b * 2 + w];
            x1_paired[(i * n + a) * 2 + u] = static_cast<T>(v);
            const double diff = xs0[a * 2 + u] - v;
            c += diff * diff;
        }
    }
    if (cost) cost[i] = c;
    if (pairing) pairing[i] = j;
}

// The atom types as a kernel argument: launching write_types_kernel with them by value puts the
// types in the workspace without a copy from host memory, which stream capture refuses (a copy
// from pageable memory) -- so a training step with typed eqot is captured as a CUDA graph too,
// its launch recording the types. kTypesByValue is above what eqot_pair_kernel's per-warp shared
// memory admits (about 400 particles in 3D, 500 in 2D), so it never limits a coupling.
constexpr int kTypesByValue = 512;  // 2 KiB of kernel arguments
struct TypesArg {
    int n;
    int t[kTypesByValue];
};

__global__ void write_types_kernel(int* __restrict__ dst, TypesArg types) {
    for (int a = static_cast<int>(threadIdx.x); a < types.n; a += static_cast<int>(blockDim.x))
        dst[a] = types.t[a];
}

struct Workspace {
    double* m;
    int64_t* sigma;
    void* lsa;
    std::size_t lsa_bytes;
    int* types;
};

Workspace carve(void* base, int64_t B, int64_t n, bool typed) {
    auto* p = static_cast<unsigned char*>(base);
    Workspace w;
    w.m = reinterpret_cast<double*>(p);
    p += align_up(static_cast<std::size_t>(B * B) * sizeof(double));
    w.sigma = reinterpret_cast<int64_t*>(p);
    p += align_up(static_cast<std::size_t>(B) * sizeof(int64_t));
    w.lsa = p;
    w.lsa_bytes = align_up(assignment_workspace_bytes(1, B));
    p += w.lsa_bytes;
    w.types = typed ? reinterpret_cast<int*>(p) : nullptr;
    (void)n;
    return w;
}

__device__ inline bool assignment_failed(const unsigned long long* flags) {
    return flags[0] != ~0ull || flags[1] != ~0ull;
}

// Without synchronisation: a failed batch assignment (a NaN pair cost, from non-finite inputs)
// leaves sigma unspecified, so before the gather every row takes sigma(i) = i (in range), ...
__global__ void guard_sigma_kernel(int64_t* __restrict__ sigma, int B,
                                   const unsigned long long* __restrict__ flags) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < B && assignment_failed(flags)) sigma[i] = i;
}

// ... and after it the whole batch is poisoned: x1_paired and cost NaN, so that the loss is not
// finite and a training step skips the batch (eqflow/coupling.h, `synchronize`).
template <class T>
__global__ void poison_kernel(T* __restrict__ x1_paired, int64_t count, double* __restrict__ cost,
                              int B, const unsigned long long* __restrict__ flags) {
    if (!assignment_failed(flags)) return;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < count;
         k += stride) {
        x1_paired[k] = static_cast<T>(__longlong_as_double(0x7ff8000000000000ll));
        if (cost && k < B) cost[k] = __longlong_as_double(0x7ff8000000000000ll);
    }
}

// sigma <- the B x B assignment on M. Synchronised: waits for the stream and throws on a failed
// assignment; otherwise queues it with guard_sigma_kernel and returns the device flags, which
// the caller hands to poison_kernel after the gather.
const unsigned long long* assign_batch(const Workspace& w, int64_t B, bool synchronize,
                                       Stream stream) {
    if (!synchronize) {
        const unsigned long long* flags = linear_sum_assignment_async<double>(
            w.m, 1, B, w.sigma, nullptr, nullptr, w.lsa, w.lsa_bytes, stream);
        EQFLOW_LAUNCH(guard_sigma_kernel, static_cast<unsigned>((B + 255) / 256), 256, 0,
                      EQFLOW_STREAM(stream), w.sigma, static_cast<int>(B), flags);
        EQFLOW_CUDA_CHECK_LAUNCH();
        return flags;
    }
    int64_t first_invalid = -1, first_infeasible = -1;
    linear_sum_assignment<double>(w.m, 1, B, w.sigma, nullptr, nullptr, w.lsa, w.lsa_bytes, stream,
                                  &first_invalid, &first_infeasible);
    EQFLOW_CHECK(first_invalid < 0, "coupling: a pair cost is NaN (non-finite input?)");
    EQFLOW_CHECK(first_infeasible < 0,
                 "coupling: the batch assignment is infeasible (non-finite input?)");
    return nullptr;
}

template <class T>
void poison_if_failed(const unsigned long long* flags, T* x1_paired, int64_t count, double* cost,
                      int64_t B, Stream stream) {
    if (!flags) return;
    const int64_t blocks = std::min<int64_t>((count + 255) / 256, 1024);
    EQFLOW_LAUNCH(poison_kernel<T>, static_cast<unsigned>(std::max<int64_t>(blocks, 1)), 256, 0,
                  EQFLOW_STREAM(stream), x1_paired, count, cost, static_cast<int>(B), flags);
    EQFLOW_CUDA_CHECK_LAUNCH();
}

unsigned grid(int64_t warps) {
    const int64_t blocks = (warps + kWarpsPerBlock - 1) / kWarpsPerBlock;
    EQFLOW_CHECK(blocks <= 0x7fffffff,
                 "GPU coupling: " << warps << " pairs are too many for one launch");
    return static_cast<unsigned>(blocks);
}

template <class T, int D>
void eqot(const CouplingOptions& o, const T* x0, const T* x1, int64_t B, int n, T* x1_paired,
          int64_t* pairing, double* cost, const Workspace& w, Stream stream) {
    const std::size_t warp_bytes = eqot_warp_bytes<D>(n);
    EQFLOW_CHECK(warp_bytes <= kSmemBudget,
                 "GPU eqot: " << n << " particles in " << D
                              << "D need more shared memory than one block's budget");
    const int warps =
        static_cast<int>(std::min<std::size_t>(kWarpsPerBlock, kSmemBudget / warp_bytes));
    const auto blocks = [&](int64_t pairs) {
        const int64_t b = (pairs + warps - 1) / warps;
        EQFLOW_CHECK(b <= 0x7fffffff,
                     "GPU eqot: " << pairs << " pairs are too many for one launch");
        return static_cast<unsigned>(b);
    };
    if (w.types) {
        EQFLOW_CHECK(n <= kTypesByValue,
                     "GPU eqot: " << n << " typed particles, at most " << kTypesByValue);
        TypesArg arg{};
        arg.n = n;
        std::copy(o.atom_types.begin(), o.atom_types.begin() + n, arg.t);
        EQFLOW_LAUNCH(write_types_kernel, 1, 128, 0, EQFLOW_STREAM(stream), w.types, arg);
        EQFLOW_CUDA_CHECK_LAUNCH();
    }
    if (D == 2 && o.exhaustive && eqot_exhaustive::applies(n, D)) {
        const auto threads = [&](int64_t pairs) {
            const int64_t b = (pairs + kExhaustiveThreads - 1) / kExhaustiveThreads;
            EQFLOW_CHECK(b <= 0x7fffffff,
                         "GPU eqot: " << pairs << " pairs are too many for one launch");
            return static_cast<unsigned>(b);
        };
        const int reflect = o.allow_reflection ? 1 : 0;
        EQFLOW_LAUNCH((eqot_exhaustive_kernel<T>), threads(B * B), kExhaustiveThreads, 0,
                      EQFLOW_STREAM(stream), x0, x1, static_cast<int>(B), n, w.types, reflect,
                      nullptr, w.m, nullptr, nullptr, nullptr);
        EQFLOW_CUDA_CHECK_LAUNCH();
        const unsigned long long* flags = assign_batch(w, B, o.synchronize, stream);
        EQFLOW_LAUNCH((eqot_exhaustive_kernel<T>), threads(B), kExhaustiveThreads, 0,
                      EQFLOW_STREAM(stream), x0, x1, static_cast<int>(B), n, w.types, reflect,
                      w.sigma, nullptr, x1_paired, cost, pairing);
        EQFLOW_CUDA_CHECK_LAUNCH();
        poison_if_failed(flags, x1_paired, B * n * D, cost, B, stream);
        return;
    }
    const EqotParams p{o.allow_reflection ? 1 : 0, o.frame_starts ? 1 : 0, o.refine_iterations,
                       o.max_starts};
    const std::size_t smem = warps * warp_bytes;
    EQFLOW_LAUNCH((eqot_pair_kernel<T, D>), blocks(B * B), 32 * warps, smem, EQFLOW_STREAM(stream),
                  x0, x1, static_cast<int>(B), n, w.types, p, nullptr, w.m, nullptr, nullptr,
                  nullptr, warp_bytes);
    EQFLOW_CUDA_CHECK_LAUNCH();
    const unsigned long long* flags = assign_batch(w, B, o.synchronize, stream);
    EQFLOW_LAUNCH((eqot_pair_kernel<T, D>), blocks(B), 32 * warps, smem, EQFLOW_STREAM(stream), x0,
                  x1, static_cast<int>(B), n, w.types, p, w.sigma, nullptr, x1_paired, cost,
                  pairing, warp_bytes);
    EQFLOW_CUDA_CHECK_LAUNCH();
    poison_if_failed(flags, x1_paired, B * n * D, cost, B, stream);
}
}  // namespace

std::size_t coupling_workspace_bytes(const CouplingOptions& o, int64_t B, int64_t n, int64_t) {
    return align_up(static_cast<std::size_t>(B * B) * sizeof(double)) +
           align_up(static_cast<std::size_t>(B) * sizeof(int64_t)) +
           align_up(assignment_workspace_bytes(1, B)) +
           (o.atom_types.empty() ? 0 : align_up(static_cast<std::size_t>(n) * sizeof(int)));
}

template <class T>
void couple(const CouplingOptions& o, const T* x0, const T* x1, int64_t B, int n, int d,
            T* x1_paired, int64_t* pairing, double* cost, void* workspace,
            std::size_t workspace_bytes, Stream stream) {
    if (B == 0) return;
    const std::size_t need = coupling_workspace_bytes(o, B, n, d);
    EQFLOW_CHECK(workspace != nullptr && workspace_bytes >= need,
                 "GPU coupling needs " << need << " bytes of workspace, got " << workspace_bytes);
    EQFLOW_CHECK(o.kind == CouplingKind::fm || B <= 1024,
                 "GPU coupling: batch " << B << " exceeds the GPU assignment limit of 1024");
    const Workspace w = carve(workspace, B, n, !o.atom_types.empty());
    const int nd = n * d;
    if (o.kind == CouplingKind::fm) {
        EQFLOW_LAUNCH(gather_kernel<T>, grid(B), 32 * kWarpsPerBlock, 0, EQFLOW_STREAM(stream), x0,
                      x1, static_cast<int>(B), nd, nullptr, x1_paired, pairing, cost);
        EQFLOW_CUDA_CHECK_LAUNCH();
        if (o.synchronize) EQFLOW_CUDA_CHECK(cudaStreamSynchronize(EQFLOW_STREAM(stream)));
        return;
    }
    if (o.kind == CouplingKind::ot) {
        EQFLOW_LAUNCH(pair_distance_kernel<T>, grid(B * B), 32 * kWarpsPerBlock, 0,
                      EQFLOW_STREAM(stream), x0, x1, static_cast<int>(B), nd, w.m);
        EQFLOW_CUDA_CHECK_LAUNCH();
        const unsigned long long* flags = assign_batch(w, B, o.synchronize, stream);
        EQFLOW_LAUNCH(gather_kernel<T>, grid(B), 32 * kWarpsPerBlock, 0, EQFLOW_STREAM(stream), x0,
                      x1, static_cast<int>(B), nd, w.sigma, x1_paired, pairing, cost);
        EQFLOW_CUDA_CHECK_LAUNCH();
        poison_if_failed(flags, x1_paired, B * nd, cost, B, stream);
        if (o.synchronize) EQFLOW_CUDA_CHECK(cudaStreamSynchronize(EQFLOW_STREAM(stream)));
        return;
    }
    if (d == 2) {
        eqot<T, 2>(o, x0, x1, B, n, x1_paired, pairing, cost, w, stream);
    } else {
        eqot<T, 3>(o, x0, x1, B, n, x1_paired, pairing, cost, w, stream);
    }
    if (o.synchronize) EQFLOW_CUDA_CHECK(cudaStreamSynchronize(EQFLOW_STREAM(stream)));
}

template void couple<float>(const CouplingOptions&, const float*, const float*, int64_t, int, int,
                            float*, int64_t*, double*, void*, std::size_t, Stream);
template void couple<double>(const CouplingOptions&, const double*, const double*, int64_t, int,
                             int, double*, int64_t*, double*, void*, std::size_t, Stream);

}  // namespace eqflow::cuda
