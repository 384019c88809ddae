// The eqot pair alignment for small systems (n <= kSmallAssignmentN, d = 2 or 3): what the CPU
// coupling runs for its B^2 pairs. It is eqot_align_pair (src/cpu/coupling_cpu.cpp) with the same
// starts, rounds, stopping rule and arithmetic in the same order, so it returns the same cost,
// permutation and rotation bit for bit (tests/test_coupling.cpp checks this), but
//   - the principal frames come from the caller, computed once per sample instead of twice per
//     pair (2B instead of 2B^2 eigen-decompositions);
//   - d is a compile-time constant and all state lives in fixed arrays on the stack;
//   - the particle assignments go to solve_assignment_small (src/cpu/assignment_small.h), or,
//     where the CPU has AVX-512, to solve_assignment_simd (src/cpu/assignment_simd.h; the same
//     results bit for bit) inside align_simd, this search again with the cost rows padded to
//     whole vectors (1.7x faster at LJ13 on one core, see bench/RESULTS.md); where it has AVX2
//     only, the same search on solve_assignment_avx2 (align_avx2).
// Larger systems (eqot_align_pair_wide): the padded search with 8 vectors a row up to n = 64
// (LJ55) on AVX-512 or AVX2, beyond that, on AVX-512, align_wide, the same search with its state
// in a per-thread scratch and the particle assignments on solve_assignment_wide
// (src/cpu/assignment_wide.cpp).
//
// Shapes: x0, x1 [n][D]; f0, f1 [D][D] principal axes as columns; perm [n]; rotation [D][D].
#include <limits>

#include "common/eqot_starts.h"
#include "common/kabsch_math.h"
#include "cpu/assignment_simd.h"
#include "cpu/assignment_small.h"
#include "cpu/coupling_cpu.h"
#include "eqflow/error.h"

namespace eqflow::cpu {

namespace {

// The rest of a search round once the particle assignment col4row is solved (both searches
// below): stop (false) when it repeats the previous round's, as Kabsch would return the same
// rotation; else Kabsch on it into r, its aligned cost, and the best so far updated. Inlined into
// both callers (one of them an AVX-512 function), the same arithmetic in the same order.
template <int D>
__attribute__((always_inline)) inline bool kabsch_round(const CouplingOptions& o, const double* x0,
                                                        const double* x1, int n, int round,
                                                        const int* col4row, int* cand, int* prev,
                                                        double* r, double& best, int64_t* perm,
                                                        double* rotation) {
    constexpr int kDD = D * D;
    bool same = round > 0;
    for (int a = 0; a < n; ++a) {
        cand[a] = col4row[a];
        same = same && cand[a] == prev[a];
    }
    if (same) return false;
    double h[kDD];
    for (int k = 0; k < kDD; ++k) h[k] = 0.0;
    for (int a = 0; a < n; ++a)
        for (int p = 0; p < D; ++p)
            for (int q = 0; q < D; ++q) h[p * D + q] += x0[a * D + p] * x1[cand[a] * D + q];
    kabsch_math::best_orthogonal(h, D, o.allow_reflection, r);
    double c = 0.0;
    for (int a = 0; a < n; ++a)
        for (int p = 0; p < D; ++p) {
            double v = 0.0;
            for (int q = 0; q < D; ++q) v += r[p * D + q] * x1[cand[a] * D + q];
            const double diff = x0[a * D + p] - v;
            c += diff * diff;
        }
    if (c < best) {
        best = c;
        for (int a = 0; a < n; ++a) perm[a] = cand[a];
        for (int k = 0; k < kDD; ++k) rotation[k] = r[k];
    }
    for (int a = 0; a < n; ++a) prev[a] = cand[a];
    return true;
}

// The round's squared distances: y = R x1 stored [D][ys] (so that the rows vectorise over b),
// then cost[a][b] = |x0_a - y_b|^2 in rows of stride cs, +inf across types. Columns >= n are not
// written. Inlined into every search below (one of them an AVX-512 function).
template <int D>
__attribute__((always_inline)) inline void rotated_costs(const double* r, const double* x0,
                                                         const double* x1, int n, const int* types,
                                                         double* __restrict y, int ys,
                                                         double* __restrict cost, int cs) {
    const double inf = std::numeric_limits<double>::infinity();
    for (int b = 0; b < n; ++b)
        for (int a = 0; a < D; ++a) {
            double v = 0.0;
            for (int c = 0; c < D; ++c) v += r[a * D + c] * x1[b * D + c];
            y[a * ys + b] = v;
        }
    for (int a = 0; a < n; ++a) {
        double* __restrict row = cost + static_cast<size_t>(a) * cs;
        for (int b = 0; b < n; ++b) {
            double c2 = 0.0;
            for (int k = 0; k < D; ++k) {
                const double diff = x0[a * D + k] - y[k * ys + b];
                c2 += diff * diff;
            }
            row[b] = c2;
        }
        if (types)
            for (int b = 0; b < n; ++b)
                if (types[a] != types[b]) row[b] = inf;
    }
}

// The frame starts of eqot_align_pair into starts [2^D][D][D], in mask order (the proper ones, all
// with reflections), cut to the o.max_starts best-scored when it asks for fewer: how many.
// scratch: (D + 1) n doubles.
template <int D>
__attribute__((always_inline)) inline int frame_starts(const CouplingOptions& o, const double* x0,
                                                       const double* x1, int n, const int* types,
                                                       const double* f0, const double* f1,
                                                       double* starts, double* scratch) {
    constexpr int kDD = D * D;
    int num = 0;
    for (int mask = 0; mask < (1 << D); ++mask) {
        const double det = kabsch_math::frame_start(f0, f1, D, mask, starts + num * kDD);
        if (det > 0.0 || o.allow_reflection) ++num;
    }
    if (o.max_starts > 0 && o.max_starts < num) {
        double score[1 << D];
        for (int st = 0; st < num; ++st)
            score[st] = eqot_starts::nearest_score<D>(starts + st * kDD, x0, x1, n, types, scratch);
        num = eqot_starts::keep_best<kDD>(starts, score, num, o.max_starts);
    }
    return num;
}

// The starts of eqot_align_pair, each handed to search(start): the identity alone without frame
// starts; otherwise the principal-axes starts (the proper ones, all with reflections) and then,
// when the best cost is still above the unaligned distance, the identity (the safety net).
template <int D, class Search>
__attribute__((always_inline)) inline void for_each_start(
    const CouplingOptions& o, const double* x0, const double* x1, int n, const int* types,
    const double* f0, const double* f1, double* scratch, const double& best, const Search& search) {
    double identity[D * D];
    for (int a = 0; a < D; ++a)
        for (int b = 0; b < D; ++b) identity[a * D + b] = a == b ? 1.0 : 0.0;
    if (!o.frame_starts) {
        search(identity);
        return;
    }
    double starts[1 << D][D * D];
    const int num = frame_starts<D>(o, x0, x1, n, types, f0, f1, &starts[0][0], scratch);
    for (int st = 0; st < num; ++st) search(starts[st]);
    double plain = 0.0;
    for (int k = 0; k < n * D; ++k) plain += (x0[k] - x1[k]) * (x0[k] - x1[k]);
    if (!(best <= plain)) search(identity);  // the safety net of eqot_align_pair
}

template <int D>
double align_small(const CouplingOptions& o, const double* x0, const double* x1, int n,
                   const int* types, const double* f0, const double* f1, int64_t* perm,
                   double* rotation) {
    constexpr int kN = kSmallAssignmentN;
    constexpr int kDD = D * D;
    const double inf = std::numeric_limits<double>::infinity();
    double cost[kN * kN];          // [n][n], dense
    double y[D * kN];              // [D][n] the rotated x1
    double scratch[(D + 1) * kN];  // the starts' scores (frame_starts)
    int cand[kN], prev[kN];
    SmallAssignment lsa;
    double best = inf;

    const auto search = [&](const double* start) {
        double r[kDD];
        for (int k = 0; k < kDD; ++k) r[k] = start[k];
        for (int round = 0; round <= o.refine_iterations; ++round) {
            rotated_costs<D>(r, x0, x1, n, types, y, kN, cost, n);
            EQFLOW_CHECK(solve_assignment_small(cost, n, lsa),
                         "eqot: particle assignment failed (non-finite input?)");
            if (!kabsch_round<D>(o, x0, x1, n, round, lsa.col4row, cand, prev, r, best, perm,
                                 rotation))
                break;
        }
    };

    for_each_start<D>(o, x0, x1, n, types, f0, f1, scratch, best, search);
    return best;
}

#if EQFLOW_HAVE_SIMD_ASSIGNMENT
// align_small with a padded fixed-size solver (Solve: solve_assignment_simd or _avx2): the same
// starts in the same order, the same rounds and stopping rule, the same arithmetic; only the cost
// matrix is [n][8 NV] (+inf in the padding) and the starts are a list rather than calls of a
// lambda (a lambda would not inherit the target attribute, and the loops here should vectorise
// with the caller's vectors too). Inlined into align_simd (AVX-512) and align_avx2.
template <int D, int NV, bool (*Solve)(const double*, int, SimdAssignment<NV>&)>
__attribute__((always_inline)) inline double align_padded(const CouplingOptions& o,
                                                          const double* x0, const double* x1, int n,
                                                          const int* types, const double* f0,
                                                          const double* f1, int64_t* perm,
                                                          double* rotation) {
    constexpr int kW = 8 * NV;
    constexpr int kDD = D * D;
    const double inf = std::numeric_limits<double>::infinity();
    alignas(64) double cost[kW * kW];  // [n][kW]
    alignas(64) double y[D * kW];      // [D][kW] the rotated x1
    double scratch[(D + 1) * kW];      // the starts' scores (frame_starts)
    int cand[kW], prev[kW];
    SimdAssignment<NV> lsa;
    double best = inf;
    for (int a = 0; a < n; ++a)
        for (int b = n; b < kW; ++b) cost[a * kW + b] = inf;

    double starts[(1 << D) + 1][kDD];
    int num_starts = 0;
    double identity[kDD];
    for (int a = 0; a < D; ++a)
        for (int b = 0; b < D; ++b) identity[a * D + b] = a == b ? 1.0 : 0.0;
    if (o.frame_starts) {
        num_starts = frame_starts<D>(o, x0, x1, n, types, f0, f1, &starts[0][0], scratch);
    } else {
        for (int k = 0; k < kDD; ++k) starts[num_starts][k] = identity[k];
        ++num_starts;
    }
    bool net = !o.frame_starts;  // the safety net below was considered (or has no place)
    for (int st = 0; st < num_starts; ++st) {
        double r[kDD];
        for (int k = 0; k < kDD; ++k) r[k] = starts[st][k];
        for (int round = 0; round <= o.refine_iterations; ++round) {
            rotated_costs<D>(r, x0, x1, n, types, y, kW, cost, kW);
            EQFLOW_CHECK(Solve(cost, n, lsa),
                         "eqot: particle assignment failed (non-finite input?)");
            if (!kabsch_round<D>(o, x0, x1, n, round, lsa.col4row, cand, prev, r, best, perm,
                                 rotation))
                break;
        }
        if (st == num_starts - 1 && !net) {
            net = true;
            // The safety net of eqot_align_pair: the identity start joins when the frame starts
            // end above the unaligned distance.
            double plain = 0.0;
            for (int k = 0; k < n * D; ++k) plain += (x0[k] - x1[k]) * (x0[k] - x1[k]);
            if (!(best <= plain)) {
                for (int k = 0; k < kDD; ++k) starts[num_starts][k] = identity[k];
                ++num_starts;
            }
        }
    }
    return best;
}

template <int D, int NV>
EQFLOW_AVX512 double align_simd(const CouplingOptions& o, const double* x0, const double* x1, int n,
                                const int* types, const double* f0, const double* f1, int64_t* perm,
                                double* rotation) {
    return align_padded<D, NV, solve_assignment_simd<NV>>(o, x0, x1, n, types, f0, f1, perm,
                                                          rotation);
}

template <int D, int NV>
EQFLOW_AVX2 double align_avx2(const CouplingOptions& o, const double* x0, const double* x1, int n,
                              const int* types, const double* f0, const double* f1, int64_t* perm,
                              double* rotation) {
    return align_padded<D, NV, solve_assignment_avx2<NV>>(o, x0, x1, n, types, f0, f1, perm,
                                                          rotation);
}

// The padded search for n <= 8 NV on this CPU's widest vectors (padded_assignment_available()).
template <int D, int NV>
double align_padded_auto(const CouplingOptions& o, const double* x0, const double* x1, int n,
                         const int* types, const double* f0, const double* f1, int64_t* perm,
                         double* rotation) {
    if (simd_assignment_available())
        return align_simd<D, NV>(o, x0, x1, n, types, f0, f1, perm, rotation);
    return align_avx2<D, NV>(o, x0, x1, n, types, f0, f1, perm, rotation);
}
#endif  // EQFLOW_HAVE_SIMD_ASSIGNMENT

#if EQFLOW_HAVE_SIMD_ASSIGNMENT
// align_small for n > 64: the same starts, rounds, stopping rule and arithmetic, with the state
// in the caller's scratch and the particle assignments on solve_assignment_wide
// (src/cpu/assignment_wide.cpp, the general solver's results bit for bit).
template <int D>
double align_wide(const CouplingOptions& o, const double* x0, const double* x1, int n,
                  const int* types, const double* f0, const double* f1, int64_t* perm,
                  double* rotation, EqotWideScratch& w) {
    constexpr int kDD = D * D;
    const double inf = std::numeric_limits<double>::infinity();
    w.cost.resize(static_cast<size_t>(n) * n);
    w.y.resize(static_cast<size_t>(D + 1) * n);  // also the starts' scores' scratch
    w.cand.resize(n);
    w.prev.resize(n);
    w.col4row.resize(n);
    double* __restrict cost = w.cost.data();
    double* __restrict y = w.y.data();  // [D][n] the rotated x1
    double best = inf;

    const auto search = [&](const double* start) {
        double r[kDD];
        for (int k = 0; k < kDD; ++k) r[k] = start[k];
        for (int round = 0; round <= o.refine_iterations; ++round) {
            rotated_costs<D>(r, x0, x1, n, types, y, n, cost, n);
            double total = 0.0;
            EQFLOW_CHECK(solve_assignment_wide(cost, n, w.col4row.data(), &total, w.lsa) ==
                             AssignmentStatus::ok,
                         "eqot: particle assignment failed (non-finite input?)");
            for (int a = 0; a < n; ++a) w.cand[a] = static_cast<int>(w.col4row[a]);
            if (!kabsch_round<D>(o, x0, x1, n, round, w.cand.data(), w.cand.data(), w.prev.data(),
                                 r, best, perm, rotation))
                break;
        }
    };

    for_each_start<D>(o, x0, x1, n, types, f0, f1, y, best, search);  // y: (D + 1) n
    return best;
}
#endif  // EQFLOW_HAVE_SIMD_ASSIGNMENT

}  // namespace

void principal_frame_of(const double* x, int n, int d, double* f) {
    double cov[9];
    for (int k = 0; k < d * d; ++k) cov[k] = 0.0;
    for (int i = 0; i < n; ++i)
        for (int a = 0; a < d; ++a)
            for (int b = 0; b < d; ++b) cov[a * d + b] += x[i * d + a] * x[i * d + b];
    kabsch_math::principal_frame(cov, d, f);
}

double eqot_align_pair_small(const CouplingOptions& o, const double* x0, const double* x1, int n,
                             int d, const int* types, const double* f0, const double* f1,
                             int64_t* perm, double* rotation) {
    if (use_exhaustive(o, n, d)) return align_exhaustive(o, x0, x1, n, types, perm, rotation);
#if EQFLOW_HAVE_SIMD_ASSIGNMENT
    if (padded_assignment_available()) {
        if (n <= 8)
            return d == 2 ? align_padded_auto<2, 1>(o, x0, x1, n, types, f0, f1, perm, rotation)
                          : align_padded_auto<3, 1>(o, x0, x1, n, types, f0, f1, perm, rotation);
        if (n <= 16)
            return d == 2 ? align_padded_auto<2, 2>(o, x0, x1, n, types, f0, f1, perm, rotation)
                          : align_padded_auto<3, 2>(o, x0, x1, n, types, f0, f1, perm, rotation);
        return d == 2 ? align_padded_auto<2, 4>(o, x0, x1, n, types, f0, f1, perm, rotation)
                      : align_padded_auto<3, 4>(o, x0, x1, n, types, f0, f1, perm, rotation);
    }
#endif
    if (d == 2) return align_small<2>(o, x0, x1, n, types, f0, f1, perm, rotation);
    return align_small<3>(o, x0, x1, n, types, f0, f1, perm, rotation);
}

bool use_eqot_wide(const CouplingOptions& o, int n, int d) {
#if EQFLOW_HAVE_SIMD_ASSIGNMENT
    // Up to 64 particles on AVX-512 or AVX2 (the padded search), beyond that on AVX-512 only.
    return n > kSmallAssignmentN && (d == 2 || d == 3) && !use_exhaustive(o, n, d) &&
           (simd_assignment_available() || (n <= 64 && avx2_assignment_available()));
#else
    (void)o;
    (void)n;
    (void)d;
    return false;
#endif
}

double eqot_align_pair_wide(const CouplingOptions& o, const double* x0, const double* x1, int n,
                            int d, const int* types, const double* f0, const double* f1,
                            int64_t* perm, double* rotation, EqotWideScratch& scratch) {
#if EQFLOW_HAVE_SIMD_ASSIGNMENT
    if (n <= 64)  // LJ55: the fixed-size search (on AVX-512, all 8 vectors of a row in registers)
        return d == 2 ? align_padded_auto<2, 8>(o, x0, x1, n, types, f0, f1, perm, rotation)
                      : align_padded_auto<3, 8>(o, x0, x1, n, types, f0, f1, perm, rotation);
    if (d == 2) return align_wide<2>(o, x0, x1, n, types, f0, f1, perm, rotation, scratch);
    return align_wide<3>(o, x0, x1, n, types, f0, f1, perm, rotation, scratch);
#else
    (void)o, (void)x0, (void)x1, (void)n, (void)d, (void)types, (void)f0, (void)f1, (void)perm,
        (void)rotation, (void)scratch;
    EQFLOW_THROW("eqot: this build has no AVX-512 assignment");
#endif
}

}  // namespace eqflow::cpu
