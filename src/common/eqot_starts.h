// src/common/eqot_starts.h: which of the eqot search's principal-axes starts to search when
// CouplingOptions::max_starts asks for fewer than all of them (eqflow/coupling.h). Small
// EQFLOW_HD functions that the CPU searches (src/cpu/coupling_cpu.cpp, coupling_small.cpp) share;
// the CUDA kernel (kernels/coupling.cu) computes the same score with its lanes.
//
// The score of a start orientation R is the nearest-neighbour cost
//     s(R) = sum_a min_b |x0_a - R x1_b|^2      (b among the particles of a's type),
// the cost a particle assignment from R could reach if it did not have to be one-to-one: a lower
// bound of the start's first assignment, at the price of one rotated distance matrix and its row
// minima, without the assignment itself. The starts turn with the inputs, so the scores, and the
// choice of the k lowest, are invariant under rotating and permuting either sample (up to
// rounding), as the search is. On LJ13 pairs (Gaussian prior against the paper's data) the
// lowest-scoring start is the one whose search ends lowest for about half the pairs, and the
// batch's coupled cost rises 1.3% with one start and 0.4% with two (bench/RESULTS.md).
#pragma once

#include <cmath>

#include "eqflow/export.h"

// On the host, inlined into its callers, so that the AVX-512 and AVX2 copies of the CPU search
// (target attributes, src/cpu/coupling_small.cpp) vectorise it with their own vectors.
#if defined(__CUDA_ARCH__) || !defined(__GNUC__)
#define EQFLOW_STARTS_FN EQFLOW_HD inline
#else
#define EQFLOW_STARTS_FN EQFLOW_HD __attribute__((always_inline)) inline
#endif

namespace eqflow::eqot_starts {

// s(R) above. r [D][D] row-major, x0, x1 [n][D], types [n] or nullptr; scratch: (D + 1) n
// doubles. Every particle has a partner of its type in the other sample (the coupling's inputs
// share their types). The loops run over the particles a of x0 innermost (x0 transposed to
// [D][n], the running minima per a), so that they vectorise without reassociating anything: the
// result is the same in every build, and the sum over a runs in order.
template <int D>
EQFLOW_STARTS_FN double nearest_score(const double* r, const double* x0, const double* x1, int n,
                                      const int* types, double* __restrict__ scratch) {
    double* __restrict__ xt = scratch;           // [D][n] x0 transposed
    double* __restrict__ low = scratch + D * n;  // [n] min_b so far
    for (int a = 0; a < n; ++a) {
        for (int k = 0; k < D; ++k) xt[k * n + a] = x0[a * D + k];
        low[a] = INFINITY;
    }
    for (int b = 0; b < n; ++b) {
        double y[D];  // R x1_b
        for (int k = 0; k < D; ++k) {
            double v = 0.0;
            for (int c = 0; c < D; ++c) v += r[k * D + c] * x1[b * D + c];
            y[k] = v;
        }
        if (types) {
            for (int a = 0; a < n; ++a) {
                double s = 0.0;
                for (int k = 0; k < D; ++k) {
                    const double diff = xt[k * n + a] - y[k];
                    s += diff * diff;
                }
                if (types[a] == types[b] && s < low[a]) low[a] = s;
            }
        } else {
            for (int a = 0; a < n; ++a) {
                double s = 0.0;
                for (int k = 0; k < D; ++k) {
                    const double diff = xt[k * n + a] - y[k];
                    s += diff * diff;
                }
                low[a] = s < low[a] ? s : low[a];
            }
        }
    }
    double total = 0.0;
    for (int a = 0; a < n; ++a) total += low[a];
    return total;
}

// The rank of start s among the num starts in the order (score, index), NaN scores last: the
// starts before it. The CUDA kernel ranks its starts with it too.
EQFLOW_STARTS_FN int rank_of(const double* score, int num, int s) {
    int rank = 0;
    const bool s_nan = score[s] != score[s];
    for (int t = 0; t < num; ++t) {
        if (t == s) continue;
        const bool t_nan = score[t] != score[t];
        const bool t_lower =
            s_nan ? (!t_nan || t < s) : (score[t] < score[s] || (score[t] == score[s] && t < s));
        rank += t_lower ? 1 : 0;
    }
    return rank;
}

// Keeps the k lowest-scoring of the num starts (starts [num][DD], score [num]; ties and NaN
// scores: the earlier start first), compacted in place in their original order; returns how
// many remain (min(k, num); all of them for k <= 0).
template <int DD>
EQFLOW_STARTS_FN int keep_best(double* starts, const double* score, int num, int k) {
    if (k <= 0 || k >= num) return num;
    int kept = 0;
    for (int s = 0; s < num; ++s) {
        if (rank_of(score, num, s) < k) {
            for (int q = 0; q < DD; ++q) starts[kept * DD + q] = starts[s * DD + q];
            ++kept;
        }
    }
    return kept;
}

}  // namespace eqflow::eqot_starts
