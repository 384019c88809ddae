// CPU reference of the fm / ot / eqot couplings: plain loops in double (the B^2 eqot pair
// alignments spread over the thread pool).
//
// Shapes: x0, x1, x1_paired [B][n][d]; C, M [B][B] (pair costs); per pair: perm [n] (x1 particle
// given to x0 particle a), R [d][d] (applied as R x1[perm[a]]).
#include "cpu/coupling_cpu.h"

#include <algorithm>
#include <limits>

#include "common/eqot_exhaustive.h"
#include "common/eqot_starts.h"
#include "cpu/kabsch_cpu.h"
#include "eqflow/error.h"
#include "eqflow/parallel.h"

namespace eqflow::cpu {

namespace {
const double kInf = std::numeric_limits<double>::infinity();

// cov [d][d] = sum_i x_i x_i^T of x [n][d].
void second_moment(const double* x, int n, int d, double* cov) {
    for (int k = 0; k < d * d; ++k) cov[k] = 0.0;
    for (int i = 0; i < n; ++i)
        for (int a = 0; a < d; ++a)
            for (int b = 0; b < d; ++b) cov[a * d + b] += x[i * d + a] * x[i * d + b];
}

// The B x B assignment on cost [B][B]; throws if it fails (it cannot for finite costs).
void assign_batch(const std::vector<double>& cost, int64_t B, int64_t* sigma) {
    AssignmentScratch scratch;
    double total = 0.0;
    EQFLOW_CHECK(first_invalid_problem(cost.data(), 1, B) < 0,
                 "coupling: a pair cost is NaN (non-finite input?)");
    const AssignmentStatus st = solve_assignment(cost.data(), B, sigma, &total, scratch);
    EQFLOW_CHECK(st == AssignmentStatus::ok,
                 "coupling: the batch assignment is infeasible (non-finite input?)");
}
}  // namespace

bool use_exhaustive(const CouplingOptions& o, int n, int d) {
    return o.exhaustive && eqot_exhaustive::applies(n, d);
}

double align_exhaustive(const CouplingOptions& o, const double* x0, const double* x1, int n,
                        const int* types, int64_t* perm, double* rotation) {
    int p[eqot_exhaustive::kMaxN];
    const double c = eqot_exhaustive::align_2d(x0, x1, n, types, o.allow_reflection, p, rotation);
    for (int a = 0; a < n; ++a) perm[a] = p[a];
    return c;
}

double eqot_align_pair(const CouplingOptions& o, const double* x0, const double* x1, int n, int d,
                       const int* types, int64_t* perm, double* rotation, EqotScratch& s) {
    if (use_exhaustive(o, n, d)) return align_exhaustive(o, x0, x1, n, types, perm, rotation);
    const int dd = d * d;
    s.cost.resize(static_cast<size_t>(n) * n);
    s.y.resize(static_cast<size_t>(n) * (d + 1));  // (d + 1) n: eqot_starts' scratch too
    s.cand.resize(n);
    s.prev.resize(n);
    // Start orientations: the principal-axes maps (rotation-invariant), or the identity alone
    // (docs/design.md's recipe) without frame starts.
    s.starts.clear();
    if (o.frame_starts) {
        double c0[9] = {0}, c1[9] = {0}, f0[9], f1[9], r0[9];
        second_moment(x0, n, d, c0);
        second_moment(x1, n, d, c1);
        kabsch_math::principal_frame(c0, d, f0);
        kabsch_math::principal_frame(c1, d, f1);
        for (int mask = 0; mask < (1 << d); ++mask) {
            const double det = kabsch_math::frame_start(f0, f1, d, mask, r0);
            if (det > 0.0 || o.allow_reflection) s.starts.insert(s.starts.end(), r0, r0 + dd);
        }
        // Fewer starts: the max_starts best by their nearest-neighbour score.
        const int num = static_cast<int>(s.starts.size()) / dd;
        if (o.max_starts > 0 && o.max_starts < num) {
            double score[8];
            for (int st = 0; st < num; ++st)
                score[st] = d == 2 ? eqot_starts::nearest_score<2>(&s.starts[st * dd], x0, x1, n,
                                                                   types, s.y.data())
                                   : eqot_starts::nearest_score<3>(&s.starts[st * dd], x0, x1, n,
                                                                   types, s.y.data());
            const int kept =
                d == 2 ? eqot_starts::keep_best<4>(s.starts.data(), score, num, o.max_starts)
                       : eqot_starts::keep_best<9>(s.starts.data(), score, num, o.max_starts);
            s.starts.resize(static_cast<size_t>(kept) * dd);
        }
    }
    const auto add_identity = [&] {
        for (int a = 0; a < d; ++a)
            for (int b = 0; b < d; ++b) s.starts.push_back(a == b ? 1.0 : 0.0);
    };
    if (!o.frame_starts) add_identity();
    double best = kInf;
    const auto search = [&](int first_start) {
        const int num_starts = static_cast<int>(s.starts.size()) / dd;
        for (int st = first_start; st < num_starts; ++st) {
            double r[9];
            for (int k = 0; k < dd; ++k) r[k] = s.starts[st * dd + k];
            for (int round = 0; round <= o.refine_iterations; ++round) {
                // y = R x1; C[a][b] = |x0_a - y_b|^2 among particles of the same type.
                for (int b = 0; b < n; ++b)
                    for (int a = 0; a < d; ++a) {
                        double v = 0.0;
                        for (int c = 0; c < d; ++c) v += r[a * d + c] * x1[b * d + c];
                        s.y[b * d + a] = v;
                    }
                for (int a = 0; a < n; ++a)
                    for (int b = 0; b < n; ++b) {
                        double c2 = 0.0;
                        for (int k = 0; k < d; ++k) {
                            const double diff = x0[a * d + k] - s.y[b * d + k];
                            c2 += diff * diff;
                        }
                        s.cost[a * n + b] = (types && types[a] != types[b]) ? kInf : c2;
                    }
                double total = 0.0;
                const AssignmentStatus status =
                    solve_assignment(s.cost.data(), n, s.cand.data(), &total, s.lsa);
                EQFLOW_CHECK(status == AssignmentStatus::ok,
                             "eqot: particle assignment failed (non-finite input?)");
                if (round > 0 && s.cand == s.prev) break;  // Kabsch would return the same rotation
                // Kabsch of the permuted x1 onto x0: H_ab = sum_a x0_a (x1_perm)_b.
                double h[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
                for (int a = 0; a < n; ++a)
                    for (int p = 0; p < d; ++p)
                        for (int q = 0; q < d; ++q)
                            h[p * d + q] += x0[a * d + p] * x1[s.cand[a] * d + q];
                kabsch_math::best_orthogonal(h, d, o.allow_reflection, r);
                double c = 0.0;
                for (int a = 0; a < n; ++a)
                    for (int p = 0; p < d; ++p) {
                        double v = 0.0;
                        for (int q = 0; q < d; ++q) v += r[p * d + q] * x1[s.cand[a] * d + q];
                        const double diff = x0[a * d + p] - v;
                        c += diff * diff;
                    }
                if (c < best) {
                    best = c;
                    for (int a = 0; a < n; ++a) perm[a] = s.cand[a];
                    for (int k = 0; k < dd; ++k) rotation[k] = r[k];
                }
                s.prev = s.cand;
            }
        }
    };
    search(0);
    if (o.frame_starts) {
        // Safety net: when the frame starts end above the unaligned distance |x0 - x1|^2 (which
        // random inputs practically never do), docs/design.md's identity start joins the search, so
        // that M_ij <= C_ij always holds (and eqot can never be worse than ot).
        double plain = 0.0;
        for (int k = 0; k < n * d; ++k) plain += (x0[k] - x1[k]) * (x0[k] - x1[k]);
        if (!(best <= plain)) {
            const int first = static_cast<int>(s.starts.size()) / dd;
            add_identity();
            search(first);
        }
    }
    return best;
}

void couple(const CouplingOptions& o, const double* x0, const double* x1, int64_t B, int n, int d,
            double* x1_paired, int64_t* pairing, double* cost) {
    const int64_t nd = static_cast<int64_t>(n) * d;
    std::vector<int64_t> sigma(B);
    // Small systems (every system eqflow ships but LJ55): eqot_align_pair_small gives the same
    // alignments bit for bit, with each sample's principal frame computed once, not per pair.
    // Larger ones (LJ55) on a CPU with AVX-512 (or AVX2, n <= 64): eqot_align_pair_wide, the same
    // again.
    const bool small = n <= kSmallAssignmentN && (d == 2 || d == 3) && !use_exhaustive(o, n, d);
    const bool wide = o.kind == CouplingKind::eqot && use_eqot_wide(o, n, d);
    std::vector<double> f0, f1;  // [B][d][d] principal frames of x0, x1 (small and wide eqot)
    if ((small && o.kind == CouplingKind::eqot) || wide) {
        f0.resize(B * d * d);
        f1.resize(B * d * d);
    }
    const int* types = o.atom_types.empty() ? nullptr : o.atom_types.data();
    if (o.kind == CouplingKind::fm) {
        for (int64_t i = 0; i < B; ++i) sigma[i] = i;
    } else if (o.kind == CouplingKind::ot) {
        std::vector<double> c(B * B);  // [B][B]
        for (int64_t i = 0; i < B; ++i)
            for (int64_t j = 0; j < B; ++j) {
                double s = 0.0;
                for (int64_t k = 0; k < nd; ++k) {
                    const double diff = x0[i * nd + k] - x1[j * nd + k];
                    s += diff * diff;
                }
                c[i * B + j] = s;
            }
        assign_batch(c, B, sigma.data());
    } else if (use_exhaustive(o, n, d)) {
        // Every permutation (eqot_exhaustive.h); M needs only the cost, not the permutation or
        // the rotation, so a row at a time without tracking them (the same values bit for bit).
        std::vector<double> m(B * B);  // [B][B] aligned costs
        parallel_for(
            B,
            [&](int64_t i) {
                eqot_exhaustive::row_costs_2d(x0 + i * nd, x1, B, n, types, o.allow_reflection,
                                              &m[i * B]);
            },
            o.threads);
        assign_batch(m, B, sigma.data());
    } else if (small || wide) {
        if (o.frame_starts)
            for (int64_t b = 0; b < B; ++b) {
                principal_frame_of(x0 + b * nd, n, d, &f0[b * d * d]);
                principal_frame_of(x1 + b * nd, n, d, &f1[b * d * d]);
            }
        std::vector<double> m(B * B);  // [B][B] aligned costs
        parallel_for(
            B,
            [&](int64_t i) {
                int64_t perm_small[kSmallAssignmentN];
                std::vector<int64_t> perm_wide(wide ? n : 0);  // no allocation on the small path
                int64_t* perm = wide ? perm_wide.data() : perm_small;
                double r[9];
                EqotWideScratch scratch;
                for (int64_t j = 0; j < B; ++j)
                    m[i * B + j] =
                        wide
                            ? eqot_align_pair_wide(o, x0 + i * nd, x1 + j * nd, n, d, types,
                                                   &f0[i * d * d], &f1[j * d * d], perm, r, scratch)
                            : eqot_align_pair_small(o, x0 + i * nd, x1 + j * nd, n, d, types,
                                                    &f0[i * d * d], &f1[j * d * d], perm, r);
            },
            o.threads);
        assign_batch(m, B, sigma.data());
    } else {
        std::vector<double> m(B * B);  // [B][B] aligned costs
        // The B^2 alignments are independent: rows of M are dealt out to the pool's threads
        // (each entry is computed alone, so the result does not depend on the thread count).
        parallel_for(
            B,
            [&](int64_t i) {
                std::vector<int64_t> perm(n);
                double r[9];
                EqotScratch scratch;
                for (int64_t j = 0; j < B; ++j)
                    m[i * B + j] = eqot_align_pair(o, x0 + i * nd, x1 + j * nd, n, d, types,
                                                   perm.data(), r, scratch);
            },
            o.threads);
        assign_batch(m, B, sigma.data());
    }
    // The paired batch; eqot recomputes the alignment of the B chosen pairs (deterministic, so it
    // is the alignment that M was built from) rather than storing B^2 permutations.
    std::vector<int64_t> perm(n);
    EqotScratch scratch;
    EqotWideScratch wide_scratch;
    for (int64_t i = 0; i < B; ++i) {
        const int64_t j = sigma[i];
        double* out = x1_paired + i * nd;
        if (o.kind == CouplingKind::eqot) {
            double r[9];
            if (wide)
                eqot_align_pair_wide(o, x0 + i * nd, x1 + j * nd, n, d, types, &f0[i * d * d],
                                     &f1[j * d * d], perm.data(), r, wide_scratch);
            else if (small)
                eqot_align_pair_small(o, x0 + i * nd, x1 + j * nd, n, d, types, &f0[i * d * d],
                                      &f1[j * d * d], perm.data(), r);
            else
                eqot_align_pair(o, x0 + i * nd, x1 + j * nd, n, d, types, perm.data(), r, scratch);
            for (int a = 0; a < n; ++a)
                for (int p = 0; p < d; ++p) {
                    double v = 0.0;
                    for (int q = 0; q < d; ++q) v += r[p * d + q] * x1[j * nd + perm[a] * d + q];
                    out[a * d + p] = v;
                }
        } else {
            for (int64_t k = 0; k < nd; ++k) out[k] = x1[j * nd + k];
        }
        if (pairing) pairing[i] = j;
        if (cost) {
            double s = 0.0;
            for (int64_t k = 0; k < nd; ++k) {
                const double diff = x0[i * nd + k] - out[k];
                s += diff * diff;
            }
            cost[i] = s;
        }
    }
}

}  // namespace eqflow::cpu
