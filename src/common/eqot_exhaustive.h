// src/common/eqot_exhaustive.h: the eqot alignment of one pair in 2D with few particles, exactly:
// the minimum of |x0 - R P x1|^2 over every permutation P (within the types) and every rotation R
// (and reflection, on request), rather than the start-and-refine search of eqflow/coupling.h.
// Small EQFLOW_HD functions in double that the CPU coupling (src/cpu/coupling_cpu.cpp) and the
// CUDA kernel (kernels/coupling.cu) share, like kabsch_math.h.
//
// Why it is cheap in 2D: for a fixed permutation the best rotation is closed-form. With
// H = sum_a x0_a (x1_P(a))^T, a rotation R(t) gives sum_a x0_a . R x1_P(a) = cos t (H00 + H11) +
// sin t (H10 - H01), at most sqrt(A^2 + B^2) with A = H00 + H11, B = H10 - H01; a reflection R S
// (S = diag(1, -1)) at most sqrt(C^2 + D^2) with C = H00 - H11, D = H10 + H01. So
//     min_R |x0 - R P x1|^2 = |x0|^2 + |x1|^2 - 2 sqrt(max score),
// and A, B, C, D are sums over the particles of per-pair terms, accumulated along a depth-first
// walk over the permutations, unrolled at compile time: n = 4 (DW4) forms 64 partial sums and
// scores 24 leaves, against two frame starts with a Hungarian and a Kabsch each. The result is the
// global minimum, so it is invariant under rotating, reflecting (with reflections) or permuting
// either input by construction, and never above the unaligned or the searched cost.
//
// Ties: permutations are visited in lexicographic order of (P(0), P(1), ...) and a later one
// replaces the best only when its score is strictly larger, so the first best one wins. Every
// operation is rounded once (philox_detail's mul/add/sub/div/sqrt_rn: no FMA contraction on the
// device; the host side relies on the build's -ffp-contract=off), so the host and the device pick
// the same permutation and build the same rotation from the same inputs, bit for bit.
#pragma once

#include <cmath>
#include <cstdint>

#include "eqflow/export.h"
#include "eqflow/philox.h"

namespace eqflow::eqot_exhaustive {

// Up to this many particles (5! = 120 permutations) in 2D the exhaustive alignment replaces the
// search (CouplingOptions::exhaustive); beyond, the permutations outnumber a search's work.
constexpr int kMaxN = 5;

EQFLOW_HD inline bool applies(int n, int d) {
    return d == 2 && n >= 1 && n <= kMaxN;
}

namespace detail {

// The walk below must unroll into its caller: as separate calls its compile-time arguments would
// buy nothing.
#if defined(__CUDACC__)
#define EQFLOW_WALK_INLINE __forceinline__
#elif defined(__GNUC__)
#define EQFLOW_WALK_INLINE inline __attribute__((always_inline))
#else
#define EQFLOW_WALK_INLINE inline
#endif

// The walk's state: the per-pair terms (row a = x0 particle, column b = x1 particle), the types,
// the current choice P(0..K-1) and the best permutation so far.
struct Walk {
    const double* ta;
    const double* tb;
    const double* tc;
    const double* td;
    const int* types;
    int choice[kMaxN];
    int* perm;
    double best;
    double best_a, best_b;  // the best leaf's (A, B), or (C, D) when it is a reflection
    bool best_mirrored;
};

// Every completion of P(0..K-1) (particles in the bit mask Used taken), x1 particle Bi and up
// tried at position K, in lexicographic order. Used, K and Bi are template arguments, so the
// whole walk unrolls into straight-line code (n = 4: 64 partial sums, 24 leaves) with no
// branch but the types checks (Typed) and, when tracking, the best-so-far test.
template <int N, bool Typed, bool Reflect, bool Track, int K, unsigned Used, int Bi>
EQFLOW_HD EQFLOW_WALK_INLINE void walk(Walk& w, double a, double b, double c, double d) {
    using philox_detail::add;
    using philox_detail::mul;
    if constexpr (Bi < N) {
        if constexpr ((Used & (1u << Bi)) == 0u) {
            if (!Typed || w.types[K] == w.types[Bi]) {
                constexpr int e = K * kMaxN + Bi;
                const double a2 = add(a, w.ta[e]), b2 = add(b, w.tb[e]);
                double c2 = 0.0, d2 = 0.0;
                if constexpr (Reflect) {
                    c2 = add(c, w.tc[e]);
                    d2 = add(d, w.td[e]);
                }
                if constexpr (Track) w.choice[K] = Bi;
                if constexpr (K + 1 == N) {
                    double score = add(mul(a2, a2), mul(b2, b2));
                    bool mirrored = false;
                    if constexpr (Reflect) {
                        const double m = add(mul(c2, c2), mul(d2, d2));
                        if (m > score) {  // a reflection only when strictly better
                            score = m;
                            mirrored = true;
                        }
                    }
                    if constexpr (!Track) {
                        w.best = score > w.best ? score : w.best;  // a max, no branch
                    } else if (score > w.best) {
                        w.best = score;
                        w.best_a = mirrored ? c2 : a2;
                        w.best_b = mirrored ? d2 : b2;
                        w.best_mirrored = mirrored;
                        for (int k = 0; k < N; ++k) w.perm[k] = w.choice[k];
                    }
                } else {
                    walk<N, Typed, Reflect, Track, K + 1, (Used | (1u << Bi)), 0>(w, a2, b2, c2,
                                                                                  d2);
                }
            }
        }
        walk<N, Typed, Reflect, Track, K, Used, Bi + 1>(w, a, b, c, d);
    }
}

#undef EQFLOW_WALK_INLINE

// align_2d for N particles, with or without types and reflections, tracking the best permutation
// and its sums or (Track = false) only the best score: every loop has a compile-time trip count
// and the walk no branch on the options (1.5x faster on the CPU than the same code with run-time
// n and flags; without tracking, 3.8x).
template <int N, bool Typed, bool Reflect, bool Track = true>
EQFLOW_HD inline double align_fixed(const double* x0, const double* x1, const int* types, int* perm,
                                    double* rotation) {
    using philox_detail::add;
    using philox_detail::mul;
    using philox_detail::sub;
    // Per-particle-pair terms of A, B (and C, D): x0_a = (u0, u1), x1_b = (w0, w1).
    double ta[kMaxN * kMaxN], tb[kMaxN * kMaxN], tc[kMaxN * kMaxN], td[kMaxN * kMaxN];
    double norms = 0.0;
    for (int a = 0; a < N; ++a) {
        const double u0 = x0[2 * a], u1 = x0[2 * a + 1];
        const double v0 = x1[2 * a], v1 = x1[2 * a + 1];
        norms = add(norms, add(add(mul(u0, u0), mul(u1, u1)), add(mul(v0, v0), mul(v1, v1))));
        for (int b = 0; b < N; ++b) {
            const double w0 = x1[2 * b], w1 = x1[2 * b + 1];
            ta[a * kMaxN + b] = add(mul(u0, w0), mul(u1, w1));
            tb[a * kMaxN + b] = sub(mul(u1, w0), mul(u0, w1));
            if constexpr (Reflect) {
                tc[a * kMaxN + b] = sub(mul(u0, w0), mul(u1, w1));
                td[a * kMaxN + b] = add(mul(u1, w0), mul(u0, w1));
            }
        }
    }
    for (int k = 0; k < N; ++k) perm[k] = k;
    Walk w{ta, tb, tc, td, types, {}, perm, -1.0, 0.0, 0.0, false};
    walk<N, Typed, Reflect, Track, 0, 0u, 0>(w, 0.0, 0.0, 0.0, 0.0);
    const double root = philox_detail::sqrt_rn(w.best);  // NaN when nothing scored (NaN input)
    if (rotation) {
        const bool ok = root > 0.0;  // else any rotation is optimal: the identity
        const double p = ok ? philox_detail::div(w.best_a, root) : 1.0;
        const double q = ok ? philox_detail::div(w.best_b, root) : 0.0;
        const bool m = ok && w.best_mirrored;
        rotation[0] = p;
        rotation[1] = m ? q : -q;
        rotation[2] = q;
        rotation[3] = m ? -p : p;
    }
    // inf - inf (infinite or overflowing coordinates) and NaN stay NaN; only rounding is clamped.
    const double c = sub(norms, mul(2.0, root));
    return c < 0.0 ? 0.0 : c;
}

// On the device only the typed copies are compiled: the kernel always passes its types (zeros
// without types, which allow the same permutations), so each N costs two copies, not four.
template <int N>
EQFLOW_HD inline double align_n(const double* x0, const double* x1, const int* types, bool reflect,
                                int* perm, double* rotation) {
#if !defined(__CUDA_ARCH__)
    if (!types)
        return reflect ? align_fixed<N, false, true>(x0, x1, types, perm, rotation)
                       : align_fixed<N, false, false>(x0, x1, types, perm, rotation);
#endif
    return reflect ? align_fixed<N, true, true>(x0, x1, types, perm, rotation)
                   : align_fixed<N, true, false>(x0, x1, types, perm, rotation);
}

template <int N, bool Typed, bool Reflect>
inline void row_fixed(const double* x0, const double* x1, int64_t count, const int* types,
                      double* m) {
    int perm[kMaxN];  // written (the identity), not read
    for (int64_t j = 0; j < count; ++j)
        m[j] = align_fixed<N, Typed, Reflect, false>(x0, x1 + j * 2 * N, types, perm, nullptr);
}

template <int N>
inline void row_n(const double* x0, const double* x1, int64_t count, const int* types, bool reflect,
                  double* m) {
    if (types)
        reflect ? row_fixed<N, true, true>(x0, x1, count, types, m)
                : row_fixed<N, true, false>(x0, x1, count, types, m);
    else
        reflect ? row_fixed<N, false, true>(x0, x1, count, types, m)
                : row_fixed<N, false, false>(x0, x1, count, types, m);
}

}  // namespace detail

// x0, x1 [n][2]; types [n] or nullptr (particles may swap only within a type; device code must
// pass types, all zeros for untyped particles); n <= kMaxN.
// Writes the best permutation (x1 particle perm[a] goes to x0 particle a; lexicographically first
// among ties) and, when rotation is not null, its best rotation [2][2] (applied as R x1[perm[a]];
// a reflection only when strictly better), built from the winning leaf's sums:
// R = [[A, -B], [B, A]] / sqrt(A^2 + B^2), or R S = [[C, D], [D, -C]] / sqrt(C^2 + D^2) (the
// identity when the score is 0). Returns the aligned cost |x0|^2 + |x1|^2 - 2 sqrt(best score),
// clamped at 0 against rounding; non-finite or overflowing inputs give NaN (the caller's batch
// assignment reports or poisons it), with the identity permutation when nothing scored.
EQFLOW_HD inline double align_2d(const double* x0, const double* x1, int n, const int* types,
                                 bool allow_reflection, int* perm, double* rotation = nullptr) {
    switch (n) {
        case 1:
            return detail::align_n<1>(x0, x1, types, allow_reflection, perm, rotation);
        case 2:
            return detail::align_n<2>(x0, x1, types, allow_reflection, perm, rotation);
        case 3:
            return detail::align_n<3>(x0, x1, types, allow_reflection, perm, rotation);
        case 4:
            return detail::align_n<4>(x0, x1, types, allow_reflection, perm, rotation);
        default:
            return detail::align_n<5>(x0, x1, types, allow_reflection, perm, rotation);
    }
}

// One row of the cost matrix on the host: m[j] = align_2d(x0, x1 + j n 2, ...) for j < count
// (x1 [count][n][2]), the same values bit for bit. Without a permutation to track, the best
// score is a running max with no branch: ~2.5x faster than align_2d per pair on the CPU, where
// the best-so-far test is a mispredicted branch.
inline void row_costs_2d(const double* x0, const double* x1, int64_t count, int n, const int* types,
                         bool allow_reflection, double* m) {
    switch (n) {
        case 1:
            return detail::row_n<1>(x0, x1, count, types, allow_reflection, m);
        case 2:
            return detail::row_n<2>(x0, x1, count, types, allow_reflection, m);
        case 3:
            return detail::row_n<3>(x0, x1, count, types, allow_reflection, m);
        case 4:
            return detail::row_n<4>(x0, x1, count, types, allow_reflection, m);
        default:
            return detail::row_n<5>(x0, x1, count, types, allow_reflection, m);
    }
}

}  // namespace eqflow::eqot_exhaustive
