// solve_assignment_wide: src/cpu/assignment_cpu.cpp's shortest-augmenting-path solver with AVX-512
// (solve_wide) or, on CPUs without it, AVX2 (solve_wide_avx2), for the problems too large for the
// fixed-size copies (n > kSmallAssignmentN): the B x B batch assignment of the ot and eqot
// couplings (B 128-256) and `eqflow assign` on larger matrices.
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
#include <type_traits>

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

// The scratch of one solve of n columns in NV vectors of 8 (both copies below).
inline void prepare_wide(AssignmentScratch& s, int n, int NV) {
    const int W = 8 * NV;
    s.u.assign(n, 0.0);
    s.v.assign(W, 0.0);
    s.spc.assign(W, std::numeric_limits<double>::infinity());
    s.path64.assign(W, 0);
    s.row4col.assign(W, -1);
    s.col4row.assign(n, -1);
    s.open.assign(NV, 0);
    s.picked.resize(n);
    s.remaining.resize(n);
    s.pos.resize(n);
}

// The row reduction's partial matching (both copies): row i takes the first free column among
// the columns at its minimum in vector k (`at`, bits); whether it did.
__attribute__((always_inline)) inline bool match_first_free(unsigned at, int k, int i, int* row4col,
                                                            int* col4row) {
    for (; at; at &= at - 1) {
        const int j = 8 * k + __builtin_ctz(at);
        if (row4col[j] < 0) {
            row4col[j] = i;
            col4row[i] = j;
            return true;
        }
    }
    return false;
}

// Column j taken by the search (both copies): it moves to j's row, or ends there (sink) when j is
// free; j leaves the open columns.
__attribute__((always_inline)) inline void wide_take(int j, const int* row4col, int* picked,
                                                     int& num_picked, unsigned char* open, int& i,
                                                     int& sink) {
    if (row4col[j] < 0) {
        sink = j;
    } else {
        i = row4col[j];
    }
    picked[num_picked++] = j;
    open[j >> 3] = static_cast<unsigned char>(open[j >> 3] & ~(1u << (j & 7)));
}

// The end of one Dijkstra search from row `cur` (both copies): the dual update over the scanned
// columns (each touches its own v and its own row's u, so the order does not matter), then the
// matching flipped along the path to `sink`. Plain pointers: the caller's __restrict ones to the
// same arrays are still live.
__attribute__((always_inline)) inline void finish_search(AssignmentScratch& s, int cur, int sink,
                                                         int num_picked, double min_val) {
    double* u = s.u.data();
    double* v = s.v.data();
    const double* spc = s.spc.data();
    const int64_t* path = s.path64.data();
    int* row4col = s.row4col.data();
    int* col4row = s.col4row.data();
    const int* picked = s.picked.data();
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

// perm and the total, summed in row order as the scalar solver does (both copies).
template <class T>
AssignmentStatus finish_wide(const T* cost, int n, const AssignmentScratch& s, int64_t* perm,
                             double* total) {
    double sum = 0.0;
    for (int r = 0; r < n; ++r) {
        perm[r] = s.col4row[r];
        sum += static_cast<double>(cost[static_cast<int64_t>(r) * n + s.col4row[r]]);
    }
    *total = sum;
    return AssignmentStatus::ok;
}

AssignmentStatus infeasible_wide(int n, int64_t* perm, double* total) {
    for (int r = 0; r < n; ++r) perm[r] = -1;
    *total = std::numeric_limits<double>::infinity();
    return AssignmentStatus::infeasible;
}

template <class T>
EQFLOW_AVX512 AssignmentStatus solve_wide(const T* cost, int n, int64_t* perm, double* total,
                                          AssignmentScratch& s) {
    const double inf = std::numeric_limits<double>::infinity();
    const __m512d vinf = _mm512_set1_pd(inf);
    const int NV = (n + 7) / 8;
    const __mmask8 tail =
        static_cast<__mmask8>(n - 8 * (NV - 1) == 8 ? 0xff : (1u << (n - 8 * (NV - 1))) - 1);
    const auto lanes = [&](int k) { return k == NV - 1 ? tail : static_cast<__mmask8>(0xff); };
    prepare_wide(s, n, NV);
    double* __restrict u = s.u.data();
    double* __restrict v = s.v.data();
    double* __restrict spc = s.spc.data();
    int64_t* __restrict path = s.path64.data();
    int* __restrict row4col = s.row4col.data();
    int* __restrict col4row = s.col4row.data();
    int* __restrict picked = s.picked.data();
    unsigned char* __restrict open = s.open.data();
    const auto infeasible = [&] { return infeasible_wide(n, perm, total); };
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
            matched = match_first_free(_mm512_mask_cmp_pd_mask(lanes(k), red, vm, _CMP_EQ_OQ), k, i,
                                       row4col, col4row);
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
            wide_take(j, row4col, picked, num_picked, open, i, sink);
        }
        finish_search(s, cur, sink, num_picked, min_val);
    }
    return finish_wide(cost, n, s, perm, total);
}

// ---- the AVX2 twin ---------------------------------------------------------------------------
// solve_wide with each vector of 8 columns as two 4-wide vectors (Avx2Lanes8,
// src/cpu/assignment_simd.h) and the masks as vector masks turned into the same bit masks: the
// same passes, arithmetic, order and tie rule, so the same results. The last vector of a row is
// read through a padded copy (+inf beyond n) instead of a masked load.

// Columns 8k .. 8k+7 of a row as doubles: all 8 (count 8) or the first `count`, +inf beyond.
template <class T>
EQFLOW_AVX2 inline Avx2Lanes8 avx2_row8(const T* p, int count) {
    if (count == 8) {
        if constexpr (std::is_same_v<T, double>) {
            return avx2_load8(p);
        } else {
            return {_mm256_cvtps_pd(_mm_loadu_ps(p)), _mm256_cvtps_pd(_mm_loadu_ps(p + 4))};
        }
    }
    alignas(32) double buf[8];
    for (int l = 0; l < 8; ++l)
        buf[l] = l < count ? static_cast<double>(p[l]) : std::numeric_limits<double>::infinity();
    return avx2_load8(buf);
}

// The open columns of a vector of 8 whose path cost equals the minimum vl.
EQFLOW_AVX2 inline unsigned avx2_at_min(const double* spc8, __m256d vl, unsigned open8) {
    const Avx2Lanes8 sp = avx2_load8(spc8);
    return static_cast<unsigned>(avx2_bits8({avx2_eq(sp.lo, vl), avx2_eq(sp.hi, vl)})) & open8;
}

template <class T>
EQFLOW_AVX2 AssignmentStatus solve_wide_avx2(const T* cost, int n, int64_t* perm, double* total,
                                             AssignmentScratch& s) {
    const double inf = std::numeric_limits<double>::infinity();
    const Avx2Lanes8 vinf = avx2_set8(inf);
    const int NV = (n + 7) / 8;
    const int tail_count = n - 8 * (NV - 1);
    const unsigned tail = tail_count == 8 ? 0xffu : (1u << tail_count) - 1;
    const auto lanes = [&](int k) { return k == NV - 1 ? tail : 0xffu; };
    const auto count = [&](int k) { return k == NV - 1 ? tail_count : 8; };
    prepare_wide(s, n, NV);
    double* __restrict u = s.u.data();
    double* __restrict v = s.v.data();
    double* __restrict spc = s.spc.data();
    int64_t* __restrict path = s.path64.data();
    int* __restrict row4col = s.row4col.data();
    int* __restrict col4row = s.col4row.data();
    int* __restrict picked = s.picked.data();
    unsigned char* __restrict open = s.open.data();
    const auto row_of = [&](int i) { return cost + static_cast<int64_t>(i) * n; };

    // Column reduction: v[j] = min_i cost[i][j]; 0 in the padding.
    for (int k = 0; k < NV; ++k) {
        Avx2Lanes8 m = vinf;
        for (int i = 0; i < n; ++i) {
            const Avx2Lanes8 r = avx2_row8(row_of(i) + 8 * k, count(k));
            m = {_mm256_min_pd(r.lo, m.lo), _mm256_min_pd(r.hi, m.hi)};
        }
        if (avx2_bits8({avx2_lt(m.lo, vinf.lo), avx2_lt(m.hi, vinf.hi)}) != lanes(k))
            return infeasible_wide(n, perm, total);
        const Avx2Lanes8 keep = avx2_mask8(lanes(k));
        _mm256_storeu_pd(v + 8 * k, _mm256_and_pd(m.lo, keep.lo));
        _mm256_storeu_pd(v + 8 * k + 4, _mm256_and_pd(m.hi, keep.hi));
    }
    // Row reduction and the partial matching: the first free column at the row minimum.
    for (int i = 0; i < n; ++i) {
        const T* row = row_of(i);
        Avx2Lanes8 low = vinf;
        for (int k = 0; k < NV; ++k) {
            const Avx2Lanes8 r = avx2_row8(row + 8 * k, count(k)), vk = avx2_load8(v + 8 * k);
            low = {_mm256_min_pd(low.lo, _mm256_sub_pd(r.lo, vk.lo)),
                   _mm256_min_pd(low.hi, _mm256_sub_pd(r.hi, vk.hi))};
        }
        const __m256d vm = avx2_min_all(low);
        const double m = _mm256_cvtsd_f64(vm);
        if (!(m < inf)) return infeasible_wide(n, perm, total);
        u[i] = m;
        bool matched = false;
        for (int k = 0; k < NV && !matched; ++k) {
            const Avx2Lanes8 r = avx2_row8(row + 8 * k, count(k)), vk = avx2_load8(v + 8 * k);
            const Avx2Lanes8 red = {_mm256_sub_pd(r.lo, vk.lo), _mm256_sub_pd(r.hi, vk.hi)};
            matched = match_first_free(
                static_cast<unsigned>(avx2_bits8({avx2_eq(red.lo, vm), avx2_eq(red.hi, vm)})) &
                    lanes(k),
                k, i, row4col, col4row);
        }
    }

    for (int cur = 0; cur < n; ++cur) {
        if (col4row[cur] >= 0) continue;
        for (int k = 0; k < NV; ++k) {
            _mm256_storeu_pd(spc + 8 * k, vinf.lo);
            _mm256_storeu_pd(spc + 8 * k + 4, vinf.hi);
            open[k] = static_cast<unsigned char>(lanes(k));
        }
        int num_picked = 0, synced = -1;
        double min_val = 0.0;
        __m256d mval = _mm256_setzero_pd();
        int i = cur, sink = -1;
        while (sink < 0) {
            const T* row = row_of(i);
            const __m256d ui = _mm256_set1_pd(u[i]);
            const __m256d vi = _mm256_castsi256_pd(_mm256_set1_epi64x(i));
            Avx2Lanes8 low = vinf;
            for (int k = 0; k < NV; ++k) {
                if (!open[k]) continue;
                const Avx2Lanes8 o = avx2_mask8(open[k]);
                const Avx2Lanes8 c = avx2_row8(row + 8 * k, count(k)), vk = avx2_load8(v + 8 * k);
                // min_val + row[j] - ui - v[j], left to right as in the scalar solver.
                const Avx2Lanes8 r = {
                    _mm256_sub_pd(_mm256_sub_pd(_mm256_add_pd(mval, c.lo), ui), vk.lo),
                    _mm256_sub_pd(_mm256_sub_pd(_mm256_add_pd(mval, c.hi), ui), vk.hi)};
                Avx2Lanes8 sp = avx2_load8(spc + 8 * k);
                const Avx2Lanes8 better = {_mm256_and_pd(o.lo, avx2_lt(r.lo, sp.lo)),
                                           _mm256_and_pd(o.hi, avx2_lt(r.hi, sp.hi))};
                sp = avx2_blend8(better, sp, r);
                _mm256_storeu_pd(spc + 8 * k, sp.lo);
                _mm256_storeu_pd(spc + 8 * k + 4, sp.hi);
                double* pk = reinterpret_cast<double*>(path + 8 * k);
                _mm256_storeu_pd(pk, _mm256_blendv_pd(_mm256_loadu_pd(pk), vi, better.lo));
                _mm256_storeu_pd(pk + 4, _mm256_blendv_pd(_mm256_loadu_pd(pk + 4), vi, better.hi));
                const Avx2Lanes8 open_sp = avx2_blend8(o, vinf, sp);
                low = {_mm256_min_pd(low.lo, open_sp.lo), _mm256_min_pd(low.hi, open_sp.hi)};
            }
            const __m256d vl = avx2_min_all(low);
            const double lowest = _mm256_cvtsd_f64(vl);
            // No finite alternating path from `cur`: no finite perfect matching (Hall).
            if (!(lowest < inf)) return infeasible_wide(n, perm, total);
            // The columns at the minimum: almost always one; on ties, the scalar rule.
            int j = -1, count_at = 0;
            for (int k = 0; k < NV; ++k) {
                if (!open[k]) continue;
                const unsigned at = avx2_at_min(spc + 8 * k, vl, open[k]);
                if (at) {
                    if (count_at == 0) j = 8 * k + __builtin_ctz(at);
                    count_at += __builtin_popcount(at);
                }
            }
            if (count_at > 1) {
                s.ties.clear();
                for (int k = 0; k < NV; ++k)
                    for (unsigned at = open[k] ? avx2_at_min(spc + 8 * k, vl, open[k]) : 0u; at;
                         at &= at - 1)
                        s.ties.push_back(8 * k + __builtin_ctz(at));
                j = tie_pick(s.ties.data(), count_at, n, picked, num_picked, row4col,
                             s.remaining.data(), s.pos.data(), &synced);
            }
            min_val = lowest;
            mval = vl;
            wide_take(j, row4col, picked, num_picked, open, i, sink);
        }
        finish_search(s, cur, sink, num_picked, min_val);
    }
    return finish_wide(cost, n, s, perm, total);
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
    EQFLOW_CHECK(padded_assignment_available(),
                 "assignment: the wide solver needs AVX-512 or AVX2");
    EQFLOW_CHECK(n >= 1 && n <= (int64_t{1} << 30), "assignment: n out of range");
    if (simd_assignment_available())
        return solve_wide(cost, static_cast<int>(n), perm, total, scratch);
    return solve_wide_avx2(cost, static_cast<int>(n), perm, total, scratch);
#else
    (void)cost;
    (void)n;
    (void)perm;
    (void)total;
    (void)scratch;
    EQFLOW_THROW("assignment: this build has no AVX-512 solver");
#endif
}

template <class T>
AssignmentStatus solve_assignment_wide_avx2(const T* cost, int64_t n, int64_t* perm, double* total,
                                            AssignmentScratch& scratch) {
#if EQFLOW_HAVE_SIMD_ASSIGNMENT
    EQFLOW_CHECK(avx2_assignment_available(), "assignment: the AVX2 solver needs AVX2");
    EQFLOW_CHECK(n >= 1 && n <= (int64_t{1} << 30), "assignment: n out of range");
    return solve_wide_avx2(cost, static_cast<int>(n), perm, total, scratch);
#else
    (void)cost;
    (void)n;
    (void)perm;
    (void)total;
    (void)scratch;
    EQFLOW_THROW("assignment: this build has no AVX2 solver");
#endif
}

template AssignmentStatus solve_assignment_wide<float>(const float*, int64_t, int64_t*, double*,
                                                       AssignmentScratch&);
template AssignmentStatus solve_assignment_wide<double>(const double*, int64_t, int64_t*, double*,
                                                        AssignmentScratch&);
template AssignmentStatus solve_assignment_wide_avx2<float>(const float*, int64_t, int64_t*,
                                                            double*, AssignmentScratch&);
template AssignmentStatus solve_assignment_wide_avx2<double>(const double*, int64_t, int64_t*,
                                                             double*, AssignmentScratch&);

}  // namespace eqflow::cpu
