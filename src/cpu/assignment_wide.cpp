// solve_assignment_wide: src/cpu/assignment_cpu.cpp's shortest-augmenting-path solver with AVX-512,
// for the problems too large for the fixed-size copies (n > kSmallAssignmentN): the B x B batch
// assignment of the ot and eqot couplings (B 128-256) and `eqflow assign` on larger matrices.
//
// Step for step the scalar solver: the same reductions, the same Dijkstra searches with the same
// arithmetic in the same order, the same tie rules, the same dual updates, so the same
// permutation and total bit for bit. What differs is how a scan runs. The scalar search walks
// `remaining`, the columns not yet reached, in an order its swaps keep permuting; here a scan is
// one pass over the row in vectors of 8 columns with the unreached ones as a byte mask per
// vector (relax every open column, take the elementwise minimum), then a pass that finds the
// columns at the minimum. Only when the minimum is attained at more than one column does the
// order matter (the last free one in `remaining` order wins, else the first): the order is then
// brought up to date from the columns taken so far, as the scalar search's swaps left it (built
// at a search's first tie, then each later pick applied once). Uniform random costs rarely tie;
// the couplings' matrices do (exact zero reduced costs), integer costs in every scan, and the
// tests use all three.
//
// Shapes: cost [n][n] row-major (T = float or double, read as double; no padding: the last
// vector of a row is a masked load, +inf beyond n), perm [n]. Scratch vectors of 8 NV entries.
#include <algorithm>
#include <cstring>
#include <limits>

#include "cpu/assignment_cpu.h"
#include "cpu/assignment_simd.h"
#include "eqflow/error.h"

namespace eqflow::cpu {

#if EQFLOW_HAVE_SIMD_ASSIGNMENT
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace {

// Columns 8k .. 8k+7 of a row as doubles, +inf where the mask is clear.
EQFLOW_AVX512 inline __m512d load8(const double* p, __mmask8 m) {
    return _mm512_mask_loadu_pd(_mm512_set1_pd(std::numeric_limits<double>::infinity()), m, p);
}
EQFLOW_AVX512 inline __m512d load8(const float* p, __mmask8 m) {
    const __m512 f = _mm512_mask_loadu_ps(_mm512_set1_ps(std::numeric_limits<float>::infinity()),
                                          static_cast<__mmask16>(m), p);
    return _mm512_cvtps_pd(_mm512_castps512_ps256(f));
}

// The scalar search's pick among the columns at the minimum (at[0..count), ascending): the last
// free one in `remaining` order, else the first. `remaining` starts as n-1, ..., 0 and each
// column taken (picked[0..num_picked), in order) is swapped with the last open entry; the order
// (remaining, and pos, each column's index in it) is brought up to date here, lazily: *synced is
// how many picks it reflects (-1: not built in this search yet), so a search without ties never
// builds it and one with several applies each pick once.
int tie_pick(const int* at, int count, int n, const int* picked, int num_picked, const int* row4col,
             int* remaining, int* pos, int* synced) {
    if (*synced < 0) {
        for (int j = 0; j < n; ++j) {
            remaining[j] = n - 1 - j;
            pos[n - 1 - j] = j;
        }
        *synced = 0;
    }
    for (int t = *synced; t < num_picked; ++t) {
        const int last = n - 1 - t, c = picked[t], index = pos[c], moved = remaining[last];
        remaining[index] = moved;
        pos[moved] = index;
        remaining[last] = c;
        pos[c] = last;
    }
    *synced = num_picked;
    int first = -1, last_free = -1;
    for (int q = 0; q < count; ++q) {
        const int c = at[q];
        if (first < 0 || pos[c] < pos[first]) first = c;
        if (row4col[c] < 0 && (last_free < 0 || pos[c] > pos[last_free])) last_free = c;
    }
    return last_free >= 0 ? last_free : first;
}

// The minimum of the 8 lanes, in every lane (exact, so the order does not matter).
EQFLOW_AVX512 inline __m512d min_all(__m512d x) {
    x = _mm512_min_pd(x, _mm512_shuffle_f64x2(x, x, 0x4e));
    x = _mm512_min_pd(x, _mm512_shuffle_f64x2(x, x, 0xb1));
    return _mm512_min_pd(x, _mm512_permute_pd(x, 0x55));
}

template <class T>
EQFLOW_AVX512 AssignmentStatus solve_wide(const T* cost, int n, int64_t* perm, double* total,
                                          AssignmentScratch& s) {
    const double inf = std::numeric_limits<double>::infinity();
    const __m512d vinf = _mm512_set1_pd(inf);
    const int NV = (n + 7) / 8, W = 8 * NV;
    const __mmask8 tail =
        static_cast<__mmask8>(n - 8 * (NV - 1) == 8 ? 0xff : (1u << (n - 8 * (NV - 1))) - 1);
    const auto lanes = [&](int k) { return k == NV - 1 ? tail : static_cast<__mmask8>(0xff); };
    s.u.assign(n, 0.0);
    s.v.assign(W, 0.0);
    s.spc.assign(W, inf);
    s.path64.assign(W, 0);
    s.row4col.assign(W, -1);
    s.col4row.assign(n, -1);
    s.open.assign(NV, 0);
    s.picked.resize(n);
    s.remaining.resize(n);
    s.pos.resize(n);
    double* __restrict u = s.u.data();
    double* __restrict v = s.v.data();
    double* __restrict spc = s.spc.data();
    int64_t* __restrict path = s.path64.data();
    int* __restrict row4col = s.row4col.data();
    int* __restrict col4row = s.col4row.data();
    int* __restrict picked = s.picked.data();
    unsigned char* __restrict open = s.open.data();
    const auto infeasible = [&] {
        for (int r = 0; r < n; ++r) perm[r] = -1;
        *total = inf;
        return AssignmentStatus::infeasible;
    };
    const auto row_of = [&](int i) { return cost + static_cast<int64_t>(i) * n; };

    // Column reduction: v[j] = min_i cost[i][j]; 0 in the padding.
    for (int k = 0; k < NV; ++k) {
        __m512d m = vinf;
        for (int i = 0; i < n; ++i) m = _mm512_min_pd(load8(row_of(i) + 8 * k, lanes(k)), m);
        if (_mm512_cmp_pd_mask(m, vinf, _CMP_LT_OQ) != lanes(k)) return infeasible();
        _mm512_storeu_pd(v + 8 * k, _mm512_maskz_mov_pd(lanes(k), m));
    }
    // Row reduction and the partial matching: the first free column at the row minimum.
    for (int i = 0; i < n; ++i) {
        const T* row = row_of(i);
        __m512d low = vinf;
        for (int k = 0; k < NV; ++k)
            low = _mm512_min_pd(
                low, _mm512_sub_pd(load8(row + 8 * k, lanes(k)), _mm512_loadu_pd(v + 8 * k)));
        const __m512d vm = min_all(low);
        const double m = _mm512_cvtsd_f64(vm);
        if (!(m < inf)) return infeasible();
        u[i] = m;
        bool matched = false;
        for (int k = 0; k < NV && !matched; ++k) {
            const __m512d red =
                _mm512_sub_pd(load8(row + 8 * k, lanes(k)), _mm512_loadu_pd(v + 8 * k));
            for (unsigned at = _mm512_mask_cmp_pd_mask(lanes(k), red, vm, _CMP_EQ_OQ); at;
                 at &= at - 1) {
                const int j = 8 * k + __builtin_ctz(at);
                if (row4col[j] < 0) {
                    row4col[j] = i;
                    col4row[i] = j;
                    matched = true;
                    break;
                }
            }
        }
    }

    for (int cur = 0; cur < n; ++cur) {
        if (col4row[cur] >= 0) continue;
        for (int k = 0; k < NV; ++k) {
            _mm512_storeu_pd(spc + 8 * k, vinf);
            open[k] = lanes(k);
        }
        int num_picked = 0, synced = -1;
        double min_val = 0.0;
        __m512d mval = _mm512_setzero_pd();
        int i = cur, sink = -1;
        while (sink < 0) {
            const T* row = row_of(i);
            const __m512d ui = _mm512_set1_pd(u[i]);
            const __m512i vi = _mm512_set1_epi64(i);
            __m512d low = vinf;
            for (int k = 0; k < NV; ++k) {
                const __mmask8 o = open[k];
                if (!o) continue;
                // min_val + row[j] - ui - v[j], left to right as in the scalar solver.
                const __m512d r =
                    _mm512_sub_pd(_mm512_sub_pd(_mm512_add_pd(mval, load8(row + 8 * k, o)), ui),
                                  _mm512_loadu_pd(v + 8 * k));
                __m512d sp = _mm512_loadu_pd(spc + 8 * k);
                const __mmask8 better = _mm512_mask_cmp_pd_mask(o, r, sp, _CMP_LT_OQ);
                sp = _mm512_mask_mov_pd(sp, better, r);
                _mm512_storeu_pd(spc + 8 * k, sp);
                _mm512_mask_storeu_epi64(path + 8 * k, better, vi);
                low = _mm512_min_pd(low, _mm512_mask_mov_pd(vinf, o, sp));
            }
            const __m512d vl = min_all(low);
            const double lowest = _mm512_cvtsd_f64(vl);
            // No finite alternating path from `cur`: no finite perfect matching (Hall).
            if (!(lowest < inf)) return infeasible();
            // The columns at the minimum: almost always one; on ties, the scalar rule.
            int j = -1, count = 0;
            for (int k = 0; k < NV; ++k) {
                const __mmask8 at =
                    _mm512_mask_cmp_pd_mask(open[k], _mm512_loadu_pd(spc + 8 * k), vl, _CMP_EQ_OQ);
                if (at) {
                    if (count == 0) j = 8 * k + __builtin_ctz(at);
                    count += __builtin_popcount(at);
                }
            }
            if (count > 1) {
                s.ties.clear();
                for (int k = 0; k < NV; ++k)
                    for (unsigned at = _mm512_mask_cmp_pd_mask(
                             open[k], _mm512_loadu_pd(spc + 8 * k), vl, _CMP_EQ_OQ);
                         at; at &= at - 1)
                        s.ties.push_back(8 * k + __builtin_ctz(at));
                j = tie_pick(s.ties.data(), count, n, picked, num_picked, row4col,
                             s.remaining.data(), s.pos.data(), &synced);
            }
            min_val = lowest;
            mval = vl;
            if (row4col[j] < 0) {
                sink = j;
            } else {
                i = row4col[j];
            }
            picked[num_picked++] = j;
            open[j >> 3] = static_cast<unsigned char>(open[j >> 3] & ~(1u << (j & 7)));
        }
        // Dual update over the scanned columns (each touches its own v and its own row's u, so
        // the order does not matter); then flip the matching along the path.
        u[cur] += min_val;
        for (int t = 0; t < num_picked; ++t) {
            const int c = picked[t];
            const double delta = min_val - spc[c];
            v[c] -= delta;
            if (c != sink) u[row4col[c]] += delta;
        }
        int j = sink;
        for (;;) {
            const int r = static_cast<int>(path[j]);
            row4col[j] = r;
            std::swap(col4row[r], j);
            if (r == cur) break;
        }
    }
    double sum = 0.0;
    for (int r = 0; r < n; ++r) {
        perm[r] = col4row[r];
        sum += static_cast<double>(row_of(r)[col4row[r]]);
    }
    *total = sum;
    return AssignmentStatus::ok;
}

}  // namespace

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif  // EQFLOW_HAVE_SIMD_ASSIGNMENT

template <class T>
AssignmentStatus solve_assignment_wide(const T* cost, int64_t n, int64_t* perm, double* total,
                                       AssignmentScratch& scratch) {
#if EQFLOW_HAVE_SIMD_ASSIGNMENT
    EQFLOW_CHECK(simd_assignment_available(), "assignment: the AVX-512 solver needs AVX-512");
    EQFLOW_CHECK(n >= 1 && n <= (int64_t{1} << 30), "assignment: n out of range");
    return solve_wide(cost, static_cast<int>(n), perm, total, scratch);
#else
    (void)cost;
    (void)n;
    (void)perm;
    (void)total;
    (void)scratch;
    EQFLOW_THROW("assignment: this build has no AVX-512 solver");
#endif
}

template AssignmentStatus solve_assignment_wide<float>(const float*, int64_t, int64_t*, double*,
                                                       AssignmentScratch&);
template AssignmentStatus solve_assignment_wide<double>(const double*, int64_t, int64_t*, double*,
                                                        AssignmentScratch&);

}  // namespace eqflow::cpu
