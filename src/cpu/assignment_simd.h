// src/cpu/assignment_simd.h: solve_assignment_small (src/cpu/assignment_small.h) with AVX-512, for
// the eqot coupling's B^2 x (starts x rounds) particle assignments of n <= 64 (NV <= 8 vectors;
// beyond 32, where solve_assignment_small stops, it is the general solver's twin, as that one is).
//
// It is solve_assignment_small step for step -- the same reductions, the same Dijkstra search with
// the same `remaining` order and tie rules, the same arithmetic in the same order, the same dual
// updates -- so it returns the same permutation and the same duals, bit for bit, on every input
// (tests/test_assignment_simd.cpp checks this, ties and +inf included). What differs is the layout:
// a row is NV vectors of 8 doubles (cost [n][8 NV], entries j >= n +inf), the column duals and
// the search's path costs and predecessors live in vector registers, the set of columns not yet
// reached is a bit mask, and each scan (relax a row, take the minimum, find the columns at it) is a
// few vector instructions instead of a loop over `remaining`. The `remaining` order is still kept,
// in scalar arrays beside the masks, only to break ties exactly as solve_assignment_small does;
// on real-valued costs the minimum is almost always attained once and the order is not read.
//
// solve_assignment_avx2 is the same solver again for CPUs with AVX2 but not AVX-512: each group of
// 8 lanes is two 4-wide vectors, and the compare results are vector masks, turned into the same
// bit masks (movemask) where the search reads them. Same results bit for bit as well.
//
// The functions carry __attribute__((target("avx512f"))) or target("avx2"): the file compiles on
// any x86-64 build (the portable one too); callers check simd_assignment_available() or
// avx2_assignment_available() at run time before calling. EQFLOW_HAVE_SIMD_ASSIGNMENT is 0 where
// the compiler cannot target them (not GCC/Clang on x86-64): the callers then keep
// solve_assignment_small.
#pragma once

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define EQFLOW_HAVE_SIMD_ASSIGNMENT 1
#include <immintrin.h>
#else
#define EQFLOW_HAVE_SIMD_ASSIGNMENT 0
#endif

#include <cstdint>
#include <cstdlib>
#include <limits>

#include "cpu/assignment_small.h"

namespace eqflow::cpu {

// Whether this CPU runs the AVX-512 solver (checked once). Setting the environment variable
// EQFLOW_NO_AVX512 (to anything) keeps it off, to test or time the other paths.
inline bool simd_assignment_available() {
#if EQFLOW_HAVE_SIMD_ASSIGNMENT
    static const bool ok =
        __builtin_cpu_supports("avx512f") && std::getenv("EQFLOW_NO_AVX512") == nullptr;
    return ok;
#else
    return false;
#endif
}

// Whether this CPU runs the AVX2 solver (checked once); EQFLOW_NO_AVX2 keeps it off. With both
// variables set, the scalar solver runs.
inline bool avx2_assignment_available() {
#if EQFLOW_HAVE_SIMD_ASSIGNMENT
    static const bool ok =
        __builtin_cpu_supports("avx2") && std::getenv("EQFLOW_NO_AVX2") == nullptr;
    return ok;
#else
    return false;
#endif
}

// Whether one of the padded fixed-size solvers (AVX-512 or AVX2) runs on this CPU.
inline bool padded_assignment_available() {
    return simd_assignment_available() || avx2_assignment_available();
}

#if EQFLOW_HAVE_SIMD_ASSIGNMENT
// GCC 12 warns that the unmasked AVX-512 intrinsics, inlined into a target("avx512f") function,
// may read an uninitialised vector (their internal _mm512_undefined_pd): a false positive.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#define EQFLOW_AVX512 __attribute__((target("avx512f")))

template <int NV>
struct SimdAssignment {
    static_assert(NV >= 1 && NV <= 8, "columns as one 64-bit mask");
    static constexpr int kW = 8 * NV;
    alignas(64) double u[kW];
    alignas(64) double v[kW];
    int row4col[kW], col4row[kW];
};

// The lanes of mask-producing compares, NV vectors, as one bit mask (bit j: column j).
template <int NV>
EQFLOW_AVX512 inline uint64_t simd_bits(const __mmask8* m) {
    uint64_t b = 0;
    for (int k = 0; k < NV; ++k) b |= static_cast<uint64_t>(m[k]) << (8 * k);
    return b;
}

// The minimum of the 8 lanes in every lane (exact, so the order does not matter): three rounds
// of min with a lane permutation (halves, 128-bit pairs, neighbours).
EQFLOW_AVX512 inline __m512d simd_min_all(__m512d x) {
    x = _mm512_min_pd(x, _mm512_shuffle_f64x2(x, x, 0x4e));
    x = _mm512_min_pd(x, _mm512_shuffle_f64x2(x, x, 0xb1));
    return _mm512_min_pd(x, _mm512_permute_pd(x, 0x55));
}

// The search's tie rule, for a minimum attained at more than one column (`at`, bits): the last
// free column in `remaining` order, else the first. `remaining` is rebuilt from the columns taken
// so far (picked[0..num_picked), in order), as solve_assignment_small's swaps left it; ties are
// rare on real-valued costs, so the search does not keep it up to date.
inline int simd_tie_pick(uint64_t at, int n, const int* picked, int num_picked,
                         const int* row4col) {
    int remaining[64], pos[64];
    for (int j = 0; j < n; ++j) {
        remaining[j] = n - 1 - j;
        pos[n - 1 - j] = j;
    }
    for (int t = 0, last = n - 1; t < num_picked; ++t, --last) {
        const int c = picked[t], index = pos[c], moved = remaining[last];
        remaining[index] = moved;
        pos[moved] = index;
        remaining[last] = c;
        pos[c] = last;
    }
    int first = -1, last_free = -1;
    for (uint64_t b = at; b; b &= b - 1) {
        const int c = __builtin_ctzll(b);
        if (first < 0 || pos[c] < pos[first]) first = c;
        if (row4col[c] < 0 && (last_free < 0 || pos[c] > pos[last_free])) last_free = c;
    }
    return last_free >= 0 ? last_free : first;
}

// A column taken by the search (both copies below), among the open columns at the minimum (`at`,
// bits): the tie rule -- the last free column in `remaining` order, else the first -- then the
// search moves to its row, or ends there (sink) when it is free; it leaves `open`.
__attribute__((always_inline)) inline void simd_take(uint64_t at, int n, const int* row4col,
                                                     int* picked, int& num_picked, uint64_t& open,
                                                     int& i, int& sink) {
    const int j = (at & (at - 1)) == 0 ? __builtin_ctzll(at)
                                       : simd_tie_pick(at, n, picked, num_picked, row4col);
    if (row4col[j] < 0) {
        sink = j;
    } else {
        i = row4col[j];
    }
    picked[num_picked++] = j;
    open &= ~(uint64_t{1} << j);
}

// The end of the search from row `cur` (both copies), its path costs and predecessors stored in
// spc_s, path_s: the dual update over the scanned columns, then the matching flipped along the
// path to `sink`.
template <int NV>
__attribute__((always_inline)) inline void simd_finish_search(SimdAssignment<NV>& s, int cur,
                                                              int sink, double min_val,
                                                              uint64_t scanned, const double* spc_s,
                                                              const int64_t* path_s) {
    s.u[cur] += min_val;
    for (uint64_t b = scanned; b; b &= b - 1) {
        const int c = __builtin_ctzll(b);
        const double delta = min_val - spc_s[c];
        s.v[c] -= delta;
        if (c != sink) s.u[s.row4col[c]] += delta;
    }
    int j = sink;
    for (;;) {
        const int r = static_cast<int>(path_s[j]);
        s.row4col[j] = r;
        const int t = s.col4row[r];
        s.col4row[r] = j;
        j = t;
        if (r == cur) break;
    }
}

// cost [n][8 NV] (finite or +inf, no NaN, no -inf; +inf at j >= n), 1 <= n <= 8 NV. Returns false
// when no finite perfect matching exists; otherwise s.col4row[r] is the column of row r, and s.u,
// s.v hold solve_assignment_small's duals.
template <int NV>
EQFLOW_AVX512 inline bool solve_assignment_simd(const double* __restrict cost, int n,
                                                SimdAssignment<NV>& s) {
    constexpr int kW = 8 * NV;
    const double inf = std::numeric_limits<double>::infinity();
    const __m512d vinf = _mm512_set1_pd(inf);
    const uint64_t real = n >= 64 ? ~uint64_t{0} : (uint64_t{1} << n) - 1;
    // Column reduction: v[j] = min_i cost[i][j] (exact, so the order does not matter).
    __m512d v[NV];
    for (int k = 0; k < NV; ++k) v[k] = vinf;
    for (int i = 0; i < n; ++i)
        for (int k = 0; k < NV; ++k) {
            const __m512d r = _mm512_loadu_pd(cost + i * kW + 8 * k);
            v[k] = _mm512_mask_blend_pd(_mm512_cmp_pd_mask(r, v[k], _CMP_LT_OQ), v[k], r);
        }
    __mmask8 m8[NV];
    for (int k = 0; k < NV; ++k) m8[k] = _mm512_cmp_pd_mask(v[k], vinf, _CMP_LT_OQ);
    if ((simd_bits<NV>(m8) & real) != real) return false;
    for (int k = 0; k < NV; ++k) {
        v[k] = _mm512_maskz_mov_pd(static_cast<__mmask8>(real >> (8 * k)), v[k]);  // pads: 0
        _mm512_store_pd(s.v + 8 * k, v[k]);
    }
    for (int j = 0; j < kW; ++j) s.row4col[j] = s.col4row[j] = -1;
    // Row reduction and the partial matching: the first free column at the row minimum (when the
    // first column there is taken, solve_assignment_small matches nothing either).
    uint64_t free_cols = real;
    for (int i = 0; i < n; ++i) {
        __m512d red[NV];
        for (int k = 0; k < NV; ++k)
            red[k] = _mm512_sub_pd(_mm512_loadu_pd(cost + i * kW + 8 * k), v[k]);
        __m512d mv = red[0];
        for (int k = 1; k < NV; ++k) mv = _mm512_min_pd(mv, red[k]);
        const __m512d vm = simd_min_all(mv);
        const double m = _mm512_cvtsd_f64(vm);
        if (!(m < inf)) return false;
        for (int k = 0; k < NV; ++k) m8[k] = _mm512_cmp_pd_mask(red[k], vm, _CMP_EQ_OQ);
        s.u[i] = m;
        const uint64_t f = simd_bits<NV>(m8) & real & free_cols;
        if (f) {
            const int j = __builtin_ctzll(f);
            s.row4col[j] = i;
            s.col4row[i] = j;
            free_cols &= ~(uint64_t{1} << j);
        }
    }
    // One Dijkstra search per row left free.
    for (int cur = 0; cur < n; ++cur) {
        if (s.col4row[cur] >= 0) continue;
        __m512d spc[NV];
        __m512i path[NV];
        for (int k = 0; k < NV; ++k) {
            spc[k] = vinf;
            path[k] = _mm512_setzero_si512();
        }
        int picked[kW], num_picked = 0;  // the columns taken from `remaining`, in order
        uint64_t open = real;            // the columns still in `remaining`
        double min_val = 0.0;
        __m512d mval = _mm512_setzero_pd();  // min_val in every lane
        int i = cur, sink = -1;
        while (sink < 0) {
            const __m512d ui = _mm512_set1_pd(s.u[i]);
            const __m512i vi = _mm512_set1_epi64(i);
            __m512d low = vinf;
            for (int k = 0; k < NV; ++k) {
                const __mmask8 o = static_cast<__mmask8>(open >> (8 * k));
                // min_val + row[j] - ui - v[j], left to right as in solve_assignment_small.
                const __m512d r = _mm512_sub_pd(
                    _mm512_sub_pd(_mm512_add_pd(mval, _mm512_loadu_pd(cost + i * kW + 8 * k)), ui),
                    v[k]);
                const __mmask8 better = _mm512_mask_cmp_pd_mask(o, r, spc[k], _CMP_LT_OQ);
                spc[k] = _mm512_mask_blend_pd(better, spc[k], r);
                path[k] = _mm512_mask_blend_epi64(better, path[k], vi);
                low = _mm512_min_pd(low, _mm512_mask_blend_pd(o, vinf, spc[k]));
            }
            const __m512d vl = simd_min_all(low);
            const double lowest = _mm512_cvtsd_f64(vl);
            if (!(lowest < inf)) return false;
            for (int k = 0; k < NV; ++k)
                m8[k] = _mm512_mask_cmp_pd_mask(static_cast<__mmask8>(open >> (8 * k)), spc[k], vl,
                                                _CMP_EQ_OQ);
            min_val = lowest;
            mval = vl;
            simd_take(simd_bits<NV>(m8), n, s.row4col, picked, num_picked, open, i, sink);
        }
        alignas(64) double spc_s[kW];
        alignas(64) int64_t path_s[kW];
        for (int k = 0; k < NV; ++k) {
            _mm512_store_pd(spc_s + 8 * k, spc[k]);
            _mm512_store_si512(reinterpret_cast<__m512i*>(path_s + 8 * k), path[k]);
        }
        simd_finish_search(s, cur, sink, min_val, real & ~open, spc_s, path_s);
        for (int k = 0; k < NV; ++k) v[k] = _mm512_load_pd(s.v + 8 * k);
    }
    return true;
}

// ---- the AVX2 twin -------------------------------------------------------------------------
// solve_assignment_simd with 4-wide vectors: a group of 8 lanes (8 columns) is {lo, hi}, masks are
// vectors of all-ones lanes, and the arithmetic is the same operations in the same order. No FMA:
// the target is "avx2" alone, and nothing here multiplies.
#define EQFLOW_AVX2 __attribute__((target("avx2")))

struct Avx2Lanes8 {
    __m256d lo, hi;
};
struct Avx2Index8 {
    __m256i lo, hi;
};

EQFLOW_AVX2 inline Avx2Lanes8 avx2_load8(const double* p) {
    return {_mm256_loadu_pd(p), _mm256_loadu_pd(p + 4)};
}
EQFLOW_AVX2 inline Avx2Lanes8 avx2_set8(double x) {
    return {_mm256_set1_pd(x), _mm256_set1_pd(x)};
}
// Lane mask of the 8 bits b (bit l: lane l all ones).
EQFLOW_AVX2 inline Avx2Lanes8 avx2_mask8(uint64_t b) {
    const __m256i bits = _mm256_set1_epi64x(static_cast<int64_t>(b & 0xff));
    const __m256i lo = _mm256_set_epi64x(8, 4, 2, 1), hi = _mm256_set_epi64x(128, 64, 32, 16);
    return {_mm256_castsi256_pd(_mm256_cmpeq_epi64(_mm256_and_si256(bits, lo), lo)),
            _mm256_castsi256_pd(_mm256_cmpeq_epi64(_mm256_and_si256(bits, hi), hi))};
}
EQFLOW_AVX2 inline uint64_t avx2_bits8(const Avx2Lanes8& m) {
    return static_cast<uint64_t>(_mm256_movemask_pd(m.lo)) |
           static_cast<uint64_t>(_mm256_movemask_pd(m.hi)) << 4;
}
EQFLOW_AVX2 inline __m256d avx2_lt(__m256d a, __m256d b) {
    return _mm256_cmp_pd(a, b, _CMP_LT_OQ);
}
EQFLOW_AVX2 inline __m256d avx2_eq(__m256d a, __m256d b) {
    return _mm256_cmp_pd(a, b, _CMP_EQ_OQ);
}
// m ? b : a, lane by lane.
EQFLOW_AVX2 inline Avx2Lanes8 avx2_blend8(const Avx2Lanes8& m, const Avx2Lanes8& a,
                                          const Avx2Lanes8& b) {
    return {_mm256_blendv_pd(a.lo, b.lo, m.lo), _mm256_blendv_pd(a.hi, b.hi, m.hi)};
}
// The minimum of the 8 lanes in every lane (exact, so the order does not matter).
EQFLOW_AVX2 inline __m256d avx2_min_all(const Avx2Lanes8& x) {
    __m256d m = _mm256_min_pd(x.lo, x.hi);
    m = _mm256_min_pd(m, _mm256_permute2f128_pd(m, m, 0x01));
    return _mm256_min_pd(m, _mm256_permute_pd(m, 0x5));
}

// solve_assignment_simd on AVX2: the same contract, the same results.
template <int NV>
EQFLOW_AVX2 inline bool solve_assignment_avx2(const double* __restrict cost, int n,
                                              SimdAssignment<NV>& s) {
    constexpr int kW = 8 * NV;
    const double inf = std::numeric_limits<double>::infinity();
    const __m256d vinf4 = _mm256_set1_pd(inf);
    const Avx2Lanes8 vinf = avx2_set8(inf);
    const uint64_t real = n >= 64 ? ~uint64_t{0} : (uint64_t{1} << n) - 1;
    // Column reduction: v[j] = min_i cost[i][j] (exact, so the order does not matter).
    Avx2Lanes8 v[NV];
    for (int k = 0; k < NV; ++k) v[k] = vinf;
    for (int i = 0; i < n; ++i)
        for (int k = 0; k < NV; ++k) {
            const Avx2Lanes8 r = avx2_load8(cost + i * kW + 8 * k);
            v[k] = avx2_blend8({avx2_lt(r.lo, v[k].lo), avx2_lt(r.hi, v[k].hi)}, v[k], r);
        }
    uint64_t finite = 0;
    for (int k = 0; k < NV; ++k)
        finite |= avx2_bits8({avx2_lt(v[k].lo, vinf4), avx2_lt(v[k].hi, vinf4)}) << (8 * k);
    if ((finite & real) != real) return false;
    for (int k = 0; k < NV; ++k) {
        const Avx2Lanes8 keep = avx2_mask8(real >> (8 * k));  // pads: 0
        v[k] = {_mm256_and_pd(v[k].lo, keep.lo), _mm256_and_pd(v[k].hi, keep.hi)};
        _mm256_store_pd(s.v + 8 * k, v[k].lo);
        _mm256_store_pd(s.v + 8 * k + 4, v[k].hi);
    }
    for (int j = 0; j < kW; ++j) s.row4col[j] = s.col4row[j] = -1;
    // Row reduction and the partial matching, as solve_assignment_simd.
    uint64_t free_cols = real;
    for (int i = 0; i < n; ++i) {
        Avx2Lanes8 red[NV];
        for (int k = 0; k < NV; ++k) {
            const Avx2Lanes8 r = avx2_load8(cost + i * kW + 8 * k);
            red[k] = {_mm256_sub_pd(r.lo, v[k].lo), _mm256_sub_pd(r.hi, v[k].hi)};
        }
        Avx2Lanes8 mv = red[0];
        for (int k = 1; k < NV; ++k)
            mv = {_mm256_min_pd(mv.lo, red[k].lo), _mm256_min_pd(mv.hi, red[k].hi)};
        const __m256d vm = avx2_min_all(mv);
        const double m = _mm256_cvtsd_f64(vm);
        if (!(m < inf)) return false;
        uint64_t at = 0;
        for (int k = 0; k < NV; ++k)
            at |= avx2_bits8({avx2_eq(red[k].lo, vm), avx2_eq(red[k].hi, vm)}) << (8 * k);
        s.u[i] = m;
        const uint64_t f = at & real & free_cols;
        if (f) {
            const int j = __builtin_ctzll(f);
            s.row4col[j] = i;
            s.col4row[i] = j;
            free_cols &= ~(uint64_t{1} << j);
        }
    }
    // One Dijkstra search per row left free.
    for (int cur = 0; cur < n; ++cur) {
        if (s.col4row[cur] >= 0) continue;
        Avx2Lanes8 spc[NV];
        Avx2Index8 path[NV];
        for (int k = 0; k < NV; ++k) {
            spc[k] = vinf;
            path[k] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
        }
        int picked[kW], num_picked = 0;  // the columns taken from `remaining`, in order
        uint64_t open = real;            // the columns still in `remaining`
        double min_val = 0.0;
        __m256d mval = _mm256_setzero_pd();  // min_val in every lane
        int i = cur, sink = -1;
        while (sink < 0) {
            const __m256d ui = _mm256_set1_pd(s.u[i]);
            const __m256i vi = _mm256_set1_epi64x(i);
            Avx2Lanes8 low = vinf;
            for (int k = 0; k < NV; ++k) {
                const Avx2Lanes8 o = avx2_mask8(open >> (8 * k));
                const Avx2Lanes8 c = avx2_load8(cost + i * kW + 8 * k);
                // min_val + row[j] - ui - v[j], left to right as in solve_assignment_small.
                const Avx2Lanes8 r = {
                    _mm256_sub_pd(_mm256_sub_pd(_mm256_add_pd(mval, c.lo), ui), v[k].lo),
                    _mm256_sub_pd(_mm256_sub_pd(_mm256_add_pd(mval, c.hi), ui), v[k].hi)};
                const Avx2Lanes8 better = {_mm256_and_pd(o.lo, avx2_lt(r.lo, spc[k].lo)),
                                           _mm256_and_pd(o.hi, avx2_lt(r.hi, spc[k].hi))};
                spc[k] = avx2_blend8(better, spc[k], r);
                path[k].lo = _mm256_castpd_si256(_mm256_blendv_pd(
                    _mm256_castsi256_pd(path[k].lo), _mm256_castsi256_pd(vi), better.lo));
                path[k].hi = _mm256_castpd_si256(_mm256_blendv_pd(
                    _mm256_castsi256_pd(path[k].hi), _mm256_castsi256_pd(vi), better.hi));
                const Avx2Lanes8 open_spc = avx2_blend8(o, vinf, spc[k]);
                low = {_mm256_min_pd(low.lo, open_spc.lo), _mm256_min_pd(low.hi, open_spc.hi)};
            }
            const __m256d vl = avx2_min_all(low);
            const double lowest = _mm256_cvtsd_f64(vl);
            if (!(lowest < inf)) return false;
            uint64_t at = 0;
            for (int k = 0; k < NV; ++k)
                at |= avx2_bits8({avx2_eq(spc[k].lo, vl), avx2_eq(spc[k].hi, vl)}) << (8 * k);
            min_val = lowest;
            mval = vl;
            simd_take(at & open, n, s.row4col, picked, num_picked, open, i, sink);
        }
        alignas(64) double spc_s[kW];
        alignas(64) int64_t path_s[kW];
        for (int k = 0; k < NV; ++k) {
            _mm256_store_pd(spc_s + 8 * k, spc[k].lo);
            _mm256_store_pd(spc_s + 8 * k + 4, spc[k].hi);
            _mm256_store_si256(reinterpret_cast<__m256i*>(path_s + 8 * k), path[k].lo);
            _mm256_store_si256(reinterpret_cast<__m256i*>(path_s + 8 * k + 4), path[k].hi);
        }
        simd_finish_search(s, cur, sink, min_val, real & ~open, spc_s, path_s);
        for (int k = 0; k < NV; ++k)
            v[k] = {_mm256_load_pd(s.v + 8 * k), _mm256_load_pd(s.v + 8 * k + 4)};
    }
    return true;
}

// The padded fixed-size solver on this CPU's widest vectors (padded_assignment_available()):
// solve_assignment_simd or solve_assignment_avx2, the same results.
template <int NV>
inline bool solve_assignment_padded(const double* cost, int n, SimdAssignment<NV>& s) {
    if (simd_assignment_available()) return solve_assignment_simd<NV>(cost, n, s);
    return solve_assignment_avx2<NV>(cost, n, s);
}

// solve_assignment_padded on a dense [n][n] problem, results into a SmallAssignment: a drop-in for
// solve_assignment_small (the same permutation and duals).
template <int NV>
inline bool solve_dense_padded(const double* __restrict dense, int n, SmallAssignment& out) {
    constexpr int kW = 8 * NV;
    alignas(64) double cost[kW * kW];
    for (int i = 0; i < n; ++i)
        for (int j = 0; j < kW; ++j)
            cost[i * kW + j] = j < n ? dense[i * n + j] : std::numeric_limits<double>::infinity();
    SimdAssignment<NV> s;
    if (!solve_assignment_padded<NV>(cost, n, s)) return false;
    for (int i = 0; i < n; ++i) {
        out.col4row[i] = s.col4row[i];
        out.row4col[i] = s.row4col[i];
        out.u[i] = s.u[i];
        out.v[i] = s.v[i];
    }
    return true;
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif  // EQFLOW_HAVE_SIMD_ASSIGNMENT

// solve_assignment_small, on the AVX-512 or AVX2 copy where the CPU has one (same results bit for
// bit).
inline bool solve_assignment_small_auto(const double* cost, int n, SmallAssignment& s) {
#if EQFLOW_HAVE_SIMD_ASSIGNMENT
    if (n >= 1 && padded_assignment_available()) {
        if (n <= 8) return solve_dense_padded<1>(cost, n, s);
        if (n <= 16) return solve_dense_padded<2>(cost, n, s);
        return solve_dense_padded<4>(cost, n, s);
    }
#endif
    return solve_assignment_small(cost, n, s);
}

}  // namespace eqflow::cpu
