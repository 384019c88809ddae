// Couplings fm / ot / eqot, CPU reference: brute force, eqot <= ot, invariances, types.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "common/eqot_exhaustive.h"
#include "common/eqot_starts.h"
#include "eqflow/assignment.h"
#include "eqflow/coupling.h"
#include "eqflow/error.h"
#include "eqflow/tensor.h"
#include "test_util.h"

namespace eqflow {
namespace {

// Sums of ~n*d*B O(1) squares in double, recomputed in other orders / after exact symmetries.
constexpr double kCostRtol = 1e-10;
// Coordinates after a rotation by a double-precision matrix: ~1e-15 relative per entry.
constexpr double kCoordTol = 1e-9;

std::vector<double> centred(std::vector<double> x, int B, int n, int d) {
    for (int b = 0; b < B; ++b)
        for (int a = 0; a < d; ++a) {
            double m = 0;
            for (int i = 0; i < n; ++i) m += x[(b * n + i) * d + a];
            m /= n;
            for (int i = 0; i < n; ++i) x[(b * n + i) * d + a] -= m;
        }
    return x;
}

std::vector<double> prior(int B, int n, int d, std::mt19937_64& gen) {
    return centred(test::random_normal(B * n * d, gen), B, n, d);
}

std::vector<double> data(int B, int n, int d, std::mt19937_64& gen) {
    return centred(test::random_configurations(B, n, d, 0.6 * std::cbrt(n), 0.8, gen), B, n, d);
}

std::vector<double> random_rotation(int d, std::mt19937_64& gen, bool improper = false) {
    std::normal_distribution<double> g(0.0, 1.0);
    std::vector<double> r;
    if (d == 2) {
        const double t = std::atan2(g(gen), g(gen));
        r = {std::cos(t), -std::sin(t), std::sin(t), std::cos(t)};
    } else {
        double q[4], norm = 0;
        for (double& v : q) {
            v = g(gen);
            norm += v * v;
        }
        for (double& v : q) v /= std::sqrt(norm);
        const double w = q[0], x = q[1], y = q[2], z = q[3];
        r = {1 - 2 * (y * y + z * z), 2 * (x * y - w * z),     2 * (x * z + w * y),
             2 * (x * y + w * z),     1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
             2 * (x * z - w * y),     2 * (y * z + w * x),     1 - 2 * (x * x + y * y)};
    }
    if (improper)
        for (int a = 0; a < d; ++a) r[a * d] = -r[a * d];
    return r;
}

// Sample b of x [B][n][d] rotated by r and with its particles permuted: out_i = r x_{pi(i)}.
void transform_sample(std::vector<double>& x, int b, int n, int d, const std::vector<double>& r,
                      const std::vector<int>& pi) {
    std::vector<double> out(n * d, 0.0);
    for (int i = 0; i < n; ++i)
        for (int a = 0; a < d; ++a)
            for (int c = 0; c < d; ++c) out[i * d + a] += r[a * d + c] * x[(b * n + pi[i]) * d + c];
    std::copy(out.begin(), out.end(), x.begin() + b * n * d);
}

struct Coupled {
    std::vector<double> x1p;
    std::vector<int64_t> pairing;
    std::vector<double> cost;
    double total() const { return std::accumulate(cost.begin(), cost.end(), 0.0); }
};

Coupled run(const CouplingOptions& o, const std::vector<double>& x0, const std::vector<double>& x1,
            int B, int n, int d) {
    Coupled c{std::vector<double>(B * n * d), std::vector<int64_t>(B), std::vector<double>(B)};
    couple(o, TensorView<const double>(x0.data(), Shape{B, n, d}),
           TensorView<const double>(x1.data(), Shape{B, n, d}),
           TensorView<double>(c.x1p.data(), Shape{B, n, d}),
           TensorView<int64_t>(c.pairing.data(), Shape{B}),
           TensorView<double>(c.cost.data(), Shape{B}));
    return c;
}

CouplingOptions opts(CouplingKind k) {
    CouplingOptions o;
    o.kind = k;
    return o;
}

double sq(const double* a, const double* b, int m) {
    double s = 0;
    for (int k = 0; k < m; ++k) s += (a[k] - b[k]) * (a[k] - b[k]);
    return s;
}

TEST(Coupling, ParseAndNames) {
    EXPECT_EQ(parse_coupling("fm"), CouplingKind::fm);
    EXPECT_EQ(parse_coupling("ot"), CouplingKind::ot);
    EXPECT_EQ(parse_coupling("eqot"), CouplingKind::eqot);
    EXPECT_STREQ(coupling_name(CouplingKind::eqot), "eqot");
    EXPECT_THROW(parse_coupling("sinkhorn"), Error);
}

TEST(Coupling, FmIsIdentity) {
    auto gen = test::rng(601);
    const int B = 5, n = 4, d = 2;
    const std::vector<double> x0 = prior(B, n, d, gen), x1 = data(B, n, d, gen);
    const Coupled c = run(opts(CouplingKind::fm), x0, x1, B, n, d);
    EXPECT_EQ(c.x1p, x1);
    for (int i = 0; i < B; ++i) {
        EXPECT_EQ(c.pairing[i], i);
        EXPECT_NEAR(c.cost[i], sq(&x0[i * n * d], &x1[i * n * d], n * d), 1e-12);
    }
}

TEST(Coupling, OtMatchesBruteForce) {
    auto gen = test::rng(602);
    const int n = 4, d = 2;
    for (int B : {1, 2, 5, 7}) {
        const std::vector<double> x0 = prior(B, n, d, gen), x1 = data(B, n, d, gen);
        const Coupled c = run(opts(CouplingKind::ot), x0, x1, B, n, d);
        std::vector<int> p(B);
        std::iota(p.begin(), p.end(), 0);
        double best = 1e300;
        do {
            double s = 0;
            for (int i = 0; i < B; ++i) s += sq(&x0[i * n * d], &x1[p[i] * n * d], n * d);
            best = std::min(best, s);
        } while (std::next_permutation(p.begin(), p.end()));
        EXPECT_NEAR(c.total(), best, kCostRtol * best) << "B=" << B;
        for (int i = 0; i < B; ++i)
            for (int k = 0; k < n * d; ++k)
                EXPECT_EQ(c.x1p[i * n * d + k], x1[c.pairing[i] * n * d + k]);
    }
}

// The exact 2D alignment by brute force, written independently of src/common/eqot_exhaustive.h:
// every permutation within the types, the best rotation (and reflection) by a scan of the angle
// refined in closed form, the aligned cost evaluated directly.
double brute_force_2d(const double* x0, const double* x1, int n, const std::vector<int>& types,
                      bool reflections) {
    std::vector<int> p(n);
    std::iota(p.begin(), p.end(), 0);
    double best = 1e300;
    do {
        bool ok = true;
        for (int a = 0; a < n && !types.empty(); ++a) ok = ok && types[a] == types[p[a]];
        if (!ok) continue;
        for (int mirror = 0; mirror <= (reflections ? 1 : 0); ++mirror) {
            // y = S x1_p (S = diag(1, -1) for the mirror image); the rotation maximising
            // sum x0 . R y has angle atan2(sum x0 x y, sum x0 . y).
            double dot = 0, cross = 0;
            for (int a = 0; a < n; ++a) {
                const double y0 = x1[2 * p[a]], y1 = mirror ? -x1[2 * p[a] + 1] : x1[2 * p[a] + 1];
                dot += x0[2 * a] * y0 + x0[2 * a + 1] * y1;
                cross += y0 * x0[2 * a + 1] - y1 * x0[2 * a];
            }
            const double t = std::atan2(cross, dot), c = std::cos(t), s = std::sin(t);
            double cost = 0;
            for (int a = 0; a < n; ++a) {
                const double y0 = x1[2 * p[a]], y1 = mirror ? -x1[2 * p[a] + 1] : x1[2 * p[a] + 1];
                const double e0 = x0[2 * a] - (c * y0 - s * y1),
                             e1 = x0[2 * a + 1] - (s * y0 + c * y1);
                cost += e0 * e0 + e1 * e1;
            }
            best = std::min(best, cost);
        }
    } while (std::next_permutation(p.begin(), p.end()));
    return best;
}

TEST(Coupling, ExhaustiveEqotIsTheExactMinimumIn2D) {
    // d = 2, n <= 5: every pair's aligned cost is the global minimum over permutations and
    // rotations (brute force above), the returned permutation and rotation attain it, and it is
    // never above the start-and-refine search, which misses the minimum on some random pairs.
    auto gen = test::rng(605);
    int search_misses = 0, pairs = 0;
    for (int n = 1; n <= 5; ++n)
        for (const bool typed : {false, true})
            for (const bool reflections : {false, true}) {
                SCOPED_TRACE(::testing::Message()
                             << "n=" << n << " typed=" << typed << " reflections=" << reflections);
                const int B = 6, d = 2, nd = n * d;
                const std::vector<double> x0 = prior(B, n, d, gen), x1 = data(B, n, d, gen);
                CouplingOptions o = opts(CouplingKind::eqot);
                o.allow_reflection = reflections;
                if (typed)
                    for (int a = 0; a < n; ++a) o.atom_types.push_back(a % 2);
                CouplingOptions search = o;
                search.exhaustive = false;
                std::vector<int64_t> perm(n);
                double r[4];
                for (int i = 0; i < B; ++i)
                    for (int j = 0; j < B; ++j) {
                        const double* a = &x0[i * nd];
                        const double* b = &x1[j * nd];
                        const double exact = brute_force_2d(a, b, n, o.atom_types, reflections);
                        const double got = eqot_align_pair(o, a, b, n, d, perm.data(), r);
                        EXPECT_NEAR(got, exact, 1e-12 * (1.0 + exact));
                        double direct = 0;  // |x0 - R P x1|^2 of what it returned
                        for (int k = 0; k < n; ++k) {
                            EXPECT_TRUE(o.atom_types.empty() ||
                                        o.atom_types[k] == o.atom_types[perm[k]]);
                            for (int u = 0; u < 2; ++u) {
                                const double v =
                                    r[u * 2] * b[2 * perm[k]] + r[u * 2 + 1] * b[2 * perm[k] + 1];
                                direct += (a[2 * k + u] - v) * (a[2 * k + u] - v);
                            }
                        }
                        EXPECT_NEAR(direct, exact, 1e-12 * (1.0 + exact));
                        const double det = r[0] * r[3] - r[1] * r[2];
                        EXPECT_NEAR(std::abs(det), 1.0, 1e-12);
                        if (!reflections) EXPECT_GT(det, 0.0);
                        const double searched = eqot_align_pair(search, a, b, n, d, perm.data(), r);
                        EXPECT_LE(got, searched + 1e-12 * (1.0 + searched));
                        search_misses += searched > exact + 1e-9 * (1.0 + exact);
                        ++pairs;
                    }
            }
    // How often the search (a heuristic) missed the minimum: recorded, not asserted.
    RecordProperty("search_misses", search_misses);
    RecordProperty("pairs", pairs);
}

TEST(Coupling, ExhaustiveEqotFindsEveryPermutationAndBreaksTiesInOrder) {
    // x1 = Q^T P x0 for every permutation P of n <= 5 generic particles and a random rotation
    // (or reflection) Q: the alignment returns exactly P (the unique zero-cost one), cost ~0, and
    // R x1[perm] reproduces x0. Then ties: a symmetric x0 aligned with itself has several
    // zero-cost permutations, and the lexicographically first one (the identity) wins.
    auto gen = test::rng(606);
    for (int n = 1; n <= 5; ++n)
        for (const bool mirror : {false, true}) {
            SCOPED_TRACE(::testing::Message() << "n=" << n << " mirror=" << mirror);
            const std::vector<double> x0 = data(1, n, 2, gen);
            const std::vector<double> q = random_rotation(2, gen, mirror);
            CouplingOptions o = opts(CouplingKind::eqot);
            o.allow_reflection = mirror;
            std::vector<int> p(n);
            std::iota(p.begin(), p.end(), 0);
            do {
                // x1[p[a]] = Q^T x0[a], so that the aligned x1 is Q x1[p[a]] = x0[a].
                std::vector<double> x1(n * 2);
                for (int a = 0; a < n; ++a)
                    for (int u = 0; u < 2; ++u)
                        x1[p[a] * 2 + u] = q[u] * x0[a * 2] + q[2 + u] * x0[a * 2 + 1];
                std::vector<int64_t> perm(n);
                double r[4];
                const double c = eqot_align_pair(o, x0.data(), x1.data(), n, 2, perm.data(), r);
                // The closed form |x0|^2 + |x1|^2 - 2 sqrt(score) cancels: zero to ~eps |x|^2.
                EXPECT_LT(c, 1e-13);
                for (int a = 0; a < n; ++a) {
                    if (n > 2) EXPECT_EQ(perm[a], p[a]);  // n = 2: the swap is a rotation by pi
                    for (int u = 0; u < 2; ++u)
                        EXPECT_NEAR(r[u * 2] * x1[perm[a] * 2] + r[u * 2 + 1] * x1[perm[a] * 2 + 1],
                                    x0[a * 2 + u], 1e-12);
                }
            } while (std::next_permutation(p.begin(), p.end()));
        }
    // A square (4-fold symmetric) and a rod (2-fold): every symmetry copy costs 0; identity first.
    const std::vector<std::vector<double>> symmetric = {{1, 0, 0, 1, -1, 0, 0, -1}, {2, 0, -2, 0}};
    for (const std::vector<double>& x : symmetric) {
        const int n = static_cast<int>(x.size()) / 2;
        std::vector<int64_t> perm(n);
        double r[4];
        EXPECT_EQ(
            eqot_align_pair(opts(CouplingKind::eqot), x.data(), x.data(), n, 2, perm.data(), r),
            0.0);  // exact here: every term is a small integer
        for (int a = 0; a < n; ++a) EXPECT_EQ(perm[a], a);
        EXPECT_EQ(r[0], 1.0);
        EXPECT_EQ(r[1], 0.0);
    }
}

TEST(Coupling, ExhaustiveEqotRowsMatchTheTrackedAlignmentBitForBit) {
    // couple() fills M a row at a time without tracking the permutation (row_costs_2d); the
    // values must be align_2d's exactly, for every fixed-size copy (n, types, reflections).
    auto gen = test::rng(607);
    for (int n = 1; n <= 5; ++n)
        for (const bool typed : {false, true})
            for (const bool reflections : {false, true}) {
                SCOPED_TRACE(::testing::Message()
                             << "n=" << n << " typed=" << typed << " reflections=" << reflections);
                const int B = 9, nd = n * 2;
                const std::vector<double> x0 = prior(B, n, 2, gen), x1 = data(B, n, 2, gen);
                std::vector<int> types;
                for (int a = 0; a < n && typed; ++a) types.push_back(a % 2);
                const int* t = typed ? types.data() : nullptr;
                std::vector<double> row(B);
                int perm[eqot_exhaustive::kMaxN];
                for (int i = 0; i < B; ++i) {
                    eqot_exhaustive::row_costs_2d(&x0[i * nd], x1.data(), B, n, t, reflections,
                                                  row.data());
                    for (int j = 0; j < B; ++j)
                        EXPECT_EQ(row[j], eqot_exhaustive::align_2d(&x0[i * nd], &x1[j * nd], n, t,
                                                                    reflections, perm));
                }
            }
}

TEST(Coupling, ExhaustiveEqotRejectsNonFiniteInput) {
    // Infinite or overflowing coordinates must not look like a perfect alignment (inf - inf):
    // the pair cost is NaN, and couple() reports the batch.
    const int n = 4, d = 2;
    std::vector<double> x0 = {1, 0, 0, 1, -1, 0, 0, -1}, x1 = x0;
    std::vector<int64_t> perm(n);
    double r[4];
    for (const double bad : {std::numeric_limits<double>::infinity(), 1e200,
                             std::numeric_limits<double>::quiet_NaN()}) {
        std::vector<double> y = x1;
        y[3] = bad;
        EXPECT_TRUE(std::isnan(
            eqot_align_pair(opts(CouplingKind::eqot), x0.data(), y.data(), n, d, perm.data(), r)))
            << bad;
    }
}

class Eqot : public ::testing::TestWithParam<std::pair<int, int>> {};  // (n, d)

TEST_P(Eqot, NeverWorseThanOtAndConsistent) {
    const auto [n, d] = GetParam();
    auto gen = test::rng(610 + n);
    const int B = 12;
    const std::vector<double> x0 = prior(B, n, d, gen), x1 = data(B, n, d, gen);
    const Coupled ot = run(opts(CouplingKind::ot), x0, x1, B, n, d);
    const Coupled eq = run(opts(CouplingKind::eqot), x0, x1, B, n, d);
    EXPECT_LE(eq.total(), ot.total());
    // Per pair too: the identity start is docs/design.md's recipe, never worse than no alignment.
    std::vector<int64_t> perm(n);
    double r[9];
    const CouplingOptions o = opts(CouplingKind::eqot);
    for (int i = 0; i < B; ++i)
        for (int j = 0; j < B; ++j)
            EXPECT_LE(eqot_align_pair(o, &x0[i * n * d], &x1[j * n * d], n, d, perm.data(), r),
                      sq(&x0[i * n * d], &x1[j * n * d], n * d));
    // The output: cost[i] = |x0_i - x1_paired[i]|^2 and x1_paired[i] = R P x1[sigma(i)], R proper.
    std::vector<bool> used(B, false);
    for (int i = 0; i < B; ++i) {
        const int64_t j = eq.pairing[i];
        ASSERT_TRUE(j >= 0 && j < B && !used[j]);
        used[j] = true;
        EXPECT_NEAR(eq.cost[i], sq(&x0[i * n * d], &eq.x1p[i * n * d], n * d),
                    kCostRtol * eq.cost[i]);
        eqot_align_pair(o, &x0[i * n * d], &x1[j * n * d], n, d, perm.data(), r);
        const double det = d == 2 ? r[0] * r[3] - r[1] * r[2]
                                  : r[0] * (r[4] * r[8] - r[5] * r[7]) -
                                        r[1] * (r[3] * r[8] - r[5] * r[6]) +
                                        r[2] * (r[3] * r[7] - r[4] * r[6]);
        EXPECT_NEAR(det, 1.0, 1e-12);
        std::vector<int64_t> sorted = perm;
        std::sort(sorted.begin(), sorted.end());
        for (int a = 0; a < n; ++a) EXPECT_EQ(sorted[a], a);
        for (int a = 0; a < n; ++a)
            for (int p = 0; p < d; ++p) {
                double v = 0;
                for (int q = 0; q < d; ++q) v += r[p * d + q] * x1[(j * n + perm[a]) * d + q];
                EXPECT_NEAR(eq.x1p[(i * n + a) * d + p], v, kCoordTol);
            }
    }
}

TEST_P(Eqot, InvariantToRotatingAndPermutingSamples) {
    const auto [n, d] = GetParam();
    auto gen = test::rng(620 + n);
    const int B = 10;
    const std::vector<double> x0 = prior(B, n, d, gen), x1 = data(B, n, d, gen);
    const CouplingOptions o = opts(CouplingKind::eqot);
    const Coupled base = run(o, x0, x1, B, n, d);
    // Rotate and permute every data sample (each its own way): nothing changes.
    std::vector<double> x1t = x1;
    for (int b = 0; b < B; ++b) {
        std::vector<int> pi(n);
        std::iota(pi.begin(), pi.end(), 0);
        std::shuffle(pi.begin(), pi.end(), gen);
        transform_sample(x1t, b, n, d, random_rotation(d, gen), pi);
    }
    const Coupled c1 = run(o, x0, x1t, B, n, d);
    EXPECT_EQ(c1.pairing, base.pairing);
    EXPECT_ALL_CLOSE(c1.cost, base.cost, 0.0, kCostRtol);
    EXPECT_ALL_CLOSE(c1.x1p, base.x1p, kCoordTol, 0.0);
    // Rotate and permute every prior sample: the costs stay, the paired data turn with x0.
    std::vector<double> x0t = x0, expected = base.x1p;
    for (int b = 0; b < B; ++b) {
        std::vector<int> pi(n);
        std::iota(pi.begin(), pi.end(), 0);
        std::shuffle(pi.begin(), pi.end(), gen);
        const std::vector<double> q = random_rotation(d, gen);
        transform_sample(x0t, b, n, d, q, pi);
        transform_sample(expected, b, n, d, q, pi);
    }
    const Coupled c0 = run(o, x0t, x1, B, n, d);
    EXPECT_EQ(c0.pairing, base.pairing);
    EXPECT_ALL_CLOSE(c0.cost, base.cost, 0.0, kCostRtol);
    EXPECT_ALL_CLOSE(c0.x1p, expected, kCoordTol, 0.0);
}

TEST_P(Eqot, FindsExactSymmetryCopies) {
    // x1 = a shuffled batch of rotated, particle-permuted copies of x0: eqot pairs every sample
    // with its own copy at (numerically) zero cost; plain ot cannot.
    constexpr double kZeroCost = 1e-18;
    const auto [n, d] = GetParam();
    auto gen = test::rng(630 + n);
    const int B = 8;
    const std::vector<double> x0 = data(B, n, d, gen);
    std::vector<int> order(B);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), gen);
    std::vector<double> x1(B * n * d);
    for (int b = 0; b < B; ++b) {
        std::copy(x0.begin() + order[b] * n * d, x0.begin() + (order[b] + 1) * n * d,
                  x1.begin() + b * n * d);
        std::vector<int> pi(n);
        std::iota(pi.begin(), pi.end(), 0);
        std::shuffle(pi.begin(), pi.end(), gen);
        transform_sample(x1, b, n, d, random_rotation(d, gen), pi);
    }
    const Coupled c = run(opts(CouplingKind::eqot), x0, x1, B, n, d);
    for (int i = 0; i < B; ++i) {
        EXPECT_EQ(order[c.pairing[i]], i);
        EXPECT_LT(c.cost[i], kZeroCost);
    }
    EXPECT_GT(run(opts(CouplingKind::ot), x0, x1, B, n, d).total(), 1.0);
}

TEST_P(Eqot, ReflectionsOnlyWhenAsked) {
    const auto [n, d] = GetParam();
    auto gen = test::rng(640 + n);
    const int B = 4;
    const std::vector<double> x0 = data(B, n, d, gen);
    std::vector<double> x1 = x0;
    for (int b = 0; b < B; ++b) {
        std::vector<int> pi(n);
        std::iota(pi.begin(), pi.end(), 0);
        std::shuffle(pi.begin(), pi.end(), gen);
        transform_sample(x1, b, n, d, random_rotation(d, gen, /*improper=*/true), pi);
    }
    CouplingOptions o = opts(CouplingKind::eqot);
    const Coupled proper = run(o, x0, x1, B, n, d);
    EXPECT_GT(proper.total(), 1e-3);  // mirror images are not superposable by rotations
    o.allow_reflection = true;
    const Coupled mirrored = run(o, x0, x1, B, n, d);
    EXPECT_LT(mirrored.total(), 1e-18);
}

TEST_P(Eqot, FewerStartsKeepInvarianceAndTheSafetyNet) {
    // max_starts 1 and 2 (the search, also in 2D): the starts are chosen by scores that turn with
    // the inputs, so rotating and permuting samples changes nothing; the safety net still bounds
    // every pair by its unaligned cost; as many starts as there are is the default search.
    const auto [n, d] = GetParam();
    auto gen = test::rng(650 + n);
    const int B = 10;
    const std::vector<double> x0 = prior(B, n, d, gen), x1 = data(B, n, d, gen);
    for (const int k : {1, 2}) {
        SCOPED_TRACE(::testing::Message() << "max_starts " << k);
        CouplingOptions o = opts(CouplingKind::eqot);
        o.exhaustive = false;
        o.max_starts = k;
        const Coupled base = run(o, x0, x1, B, n, d);
        std::vector<double> x1t = x1, x0t = x0, expected = base.x1p;
        for (int b = 0; b < B; ++b) {
            std::vector<int> pi(n);
            std::iota(pi.begin(), pi.end(), 0);
            std::shuffle(pi.begin(), pi.end(), gen);
            transform_sample(x1t, b, n, d, random_rotation(d, gen), pi);
            std::shuffle(pi.begin(), pi.end(), gen);
            const std::vector<double> q = random_rotation(d, gen);
            transform_sample(x0t, b, n, d, q, pi);
            transform_sample(expected, b, n, d, q, pi);
        }
        const Coupled c1 = run(o, x0, x1t, B, n, d);
        EXPECT_EQ(c1.pairing, base.pairing);
        EXPECT_ALL_CLOSE(c1.cost, base.cost, 0.0, kCostRtol);
        EXPECT_ALL_CLOSE(c1.x1p, base.x1p, kCoordTol, 0.0);
        const Coupled c0 = run(o, x0t, x1, B, n, d);
        EXPECT_EQ(c0.pairing, base.pairing);
        EXPECT_ALL_CLOSE(c0.cost, base.cost, 0.0, kCostRtol);
        EXPECT_ALL_CLOSE(c0.x1p, expected, kCoordTol, 0.0);
        std::vector<int64_t> perm(n);
        double r[9];
        for (int i = 0; i < B; ++i)
            for (int j = 0; j < B; ++j)
                EXPECT_LE(eqot_align_pair(o, &x0[i * n * d], &x1[j * n * d], n, d, perm.data(), r),
                          sq(&x0[i * n * d], &x1[j * n * d], n * d));
    }
    CouplingOptions all = opts(CouplingKind::eqot), many = all;
    all.exhaustive = many.exhaustive = false;
    many.max_starts = 1 << (d - 1);  // every proper start
    const Coupled a = run(all, x0, x1, B, n, d), m = run(many, x0, x1, B, n, d);
    EXPECT_EQ(m.pairing, a.pairing);
    EXPECT_EQ(m.cost, a.cost);
    EXPECT_EQ(m.x1p, a.x1p);
}

INSTANTIATE_TEST_SUITE_P(Systems, Eqot,
                         ::testing::Values(std::make_pair(4, 2), std::make_pair(13, 3)),
                         [](const auto& info) { return "n" + std::to_string(info.param.first); });

// The aligned copy of x1 and its cost for one pair from eqot_align_pair (the reference), in the
// arithmetic order of the coupling's output: out_a = R x1[perm[a]], cost = sum |x0 - out|^2.
double reference_pair(const CouplingOptions& o, const double* x0, const double* x1, int n, int d,
                      double* out) {
    std::vector<int64_t> perm(n);
    double r[9];
    eqot_align_pair(o, x0, x1, n, d, perm.data(), r);
    for (int a = 0; a < n; ++a)
        for (int p = 0; p < d; ++p) {
            double v = 0.0;
            for (int q = 0; q < d; ++q) v += r[p * d + q] * x1[perm[a] * d + q];
            out[a * d + p] = v;
        }
    return sq(x0, out, n * d);
}

TEST(Coupling, EqotSmallPathMatchesTheReferenceBitForBit) {
    // couple() runs the fixed-size eqot search (src/cpu/coupling_small.cpp) for n <= 32, for
    // larger n eqot_align_pair_wide where the CPU has AVX-512 (the fixed-size AVX-512 search up
    // to n = 64, beyond that its copy on the wide general assignment) or AVX2 (the fixed-size
    // AVX2 search up to n = 64), and eqot_align_pair (src/cpu/coupling_cpu.cpp) otherwise; the
    // public eqot_align_pair is always the latter.
    // Coupling each pair alone (B = 1) exposes the fast path's alignment of every pair: permutation
    // and rotation must be the reference's exactly, so the outputs are bit-identical.
    struct Case {
        int n, d;
        bool typed, reflections, identity_start;
        int refine;
        bool exhaustive = true;  // d = 2, n <= 5 only
        int max_starts = 0;      // the best-scored starts only (0: all)
    };
    const Case cases[] = {{4, 2, false, false, false, 1},
                          {13, 3, false, false, false, 1},
                          {2, 3, false, false, false, 1},
                          {7, 3, true, true, false, 3},
                          {13, 3, false, false, true, 0},
                          {9, 2, false, true, false, 2},
                          {32, 3, false, false, false, 1},
                          {22, 3, true, false, false, 1},
                          {4, 2, false, false, false, 1, false},
                          {5, 2, true, true, false, 2, false},
                          {5, 2, true, true, false, 1},
                          {33, 3, false, false, false, 1},
                          {55, 3, false, false, false, 1},
                          {40, 3, true, true, false, 2},
                          {40, 2, false, false, false, 1},
                          {55, 3, false, false, true, 0},
                          {64, 3, true, false, false, 1},
                          {70, 3, false, false, false, 1},
                          {66, 2, true, true, false, 2},
                          // Fewer starts: the same scores and choice on every path.
                          {13, 3, false, false, false, 1, true, 1},
                          {13, 3, false, false, false, 1, true, 2},
                          {7, 3, true, true, false, 2, true, 3},
                          {9, 2, false, false, false, 1, true, 1},
                          {4, 2, false, true, false, 1, false, 2},
                          {22, 3, true, false, false, 1, true, 1},
                          {55, 3, false, false, false, 1, true, 1},
                          {70, 3, true, false, false, 1, true, 2}};
    auto gen = test::rng(670);
    for (const Case& c : cases) {
        SCOPED_TRACE(::testing::Message()
                     << "n=" << c.n << " d=" << c.d << " max_starts=" << c.max_starts);
        const int B = 5, n = c.n, d = c.d, nd = n * d;
        const std::vector<double> x0 = prior(B, n, d, gen), x1 = data(B, n, d, gen);
        CouplingOptions o = opts(CouplingKind::eqot);
        o.allow_reflection = c.reflections;
        o.frame_starts = !c.identity_start;
        o.refine_iterations = c.refine;
        o.exhaustive = c.exhaustive;
        o.max_starts = c.max_starts;
        if (c.typed)
            for (int a = 0; a < n; ++a) o.atom_types.push_back(a % 3);
        std::vector<double> expected(nd);
        for (int i = 0; i < B; ++i)
            for (int j = 0; j < B; ++j) {
                const std::vector<double> a(x0.begin() + i * nd, x0.begin() + (i + 1) * nd),
                    b(x1.begin() + j * nd, x1.begin() + (j + 1) * nd);
                const Coupled got = run(o, a, b, 1, n, d);
                const double cost = reference_pair(o, a.data(), b.data(), n, d, expected.data());
                EXPECT_EQ(got.cost[0], cost) << "pair " << i << ", " << j;
                EXPECT_EQ(got.x1p, expected) << "pair " << i << ", " << j;
            }
        // The whole batch: the reference's pair costs give the same batch assignment.
        std::vector<double> m(B * B);
        for (int i = 0; i < B; ++i)
            for (int j = 0; j < B; ++j)
                m[i * B + j] = reference_pair(o, &x0[i * nd], &x1[j * nd], n, d, expected.data());
        std::vector<int64_t> sigma(B);
        linear_sum_assignment(TensorView<const double>(m.data(), Shape{B, B}),
                              TensorView<int64_t>(sigma.data(), Shape{B}));
        const Coupled all = run(o, x0, x1, B, n, d);
        EXPECT_EQ(all.pairing, sigma);
        for (int i = 0; i < B; ++i) EXPECT_EQ(all.cost[i], m[i * B + sigma[i]]) << "sample " << i;
    }
}

TEST(Coupling, EqotSafetyNetOnSymmetricLattices) {
    // A cubic lattice has a degenerate second moment, so its principal frames are arbitrary and
    // the frame starts can end far from a slightly perturbed copy of it; the identity start then
    // joins the search (eqflow/coupling.h), so M_ij <= |x0 - x1|^2. 27 and 64 particles take
    // the fixed-size paths, 125 the wide one; all must also equal the reference bit for bit.
    auto gen = test::rng(671);
    std::normal_distribution<double> noise(0.0, 1e-3);
    for (const int side : {3, 4, 5}) {
        const int n = side * side * side, d = 3, nd = n * d;
        SCOPED_TRACE(::testing::Message() << "n=" << n);
        for (int rep = 0; rep < 10; ++rep) {
            std::vector<double> x0(nd), x1(nd);
            for (int a = 0; a < n; ++a) {
                const int c[3] = {a % side, (a / side) % side, a / (side * side)};
                for (int k = 0; k < d; ++k) x0[a * d + k] = c[k] - 0.5 * (side - 1);
            }
            for (int k = 0; k < nd; ++k) x1[k] = x0[k] + noise(gen);
            std::vector<double> expected(nd);
            // Also from the best-scored start alone (max_starts 1): the net stays.
            for (const int starts : {0, 1}) {
                CouplingOptions o = opts(CouplingKind::eqot);
                o.max_starts = starts;
                const Coupled got = run(o, x0, x1, 1, n, d);
                EXPECT_LE(got.cost[0], sq(x0.data(), x1.data(), nd)) << "rep " << rep << starts;
                EXPECT_EQ(got.cost[0],
                          reference_pair(o, x0.data(), x1.data(), n, d, expected.data()))
                    << "rep " << rep << " max_starts " << starts;
                EXPECT_EQ(got.x1p, expected) << "rep " << rep << " max_starts " << starts;
            }
        }
    }
}

TEST(Coupling, EqotDoesNotDependOnTheThreadCount) {
    const int B = 9, n = 6, d = 3;
    auto gen = test::rng(640);
    const std::vector<double> x0 = prior(B, n, d, gen), x1 = data(B, n, d, gen);
    CouplingOptions o = opts(CouplingKind::eqot);
    o.threads = 1;
    const Coupled one = run(o, x0, x1, B, n, d);
    o.threads = 4;
    const Coupled four = run(o, x0, x1, B, n, d);
    EXPECT_EQ(one.x1p, four.x1p);
    EXPECT_EQ(one.pairing, four.pairing);
    EXPECT_EQ(one.cost, four.cost);
}

TEST(Coupling, EqotRespectsTypes) {
    auto gen = test::rng(650);
    const int B = 6, n = 7, d = 3;
    CouplingOptions o = opts(CouplingKind::eqot);
    o.atom_types = {0, 1, 1, 0, 2, 1, 0};
    const std::vector<double> x0 = prior(B, n, d, gen), x1 = data(B, n, d, gen);
    std::vector<int64_t> perm(n);
    double r[9];
    for (int i = 0; i < B; ++i)
        for (int j = 0; j < B; ++j) {
            eqot_align_pair(o, &x0[i * n * d], &x1[j * n * d], n, d, perm.data(), r);
            for (int a = 0; a < n; ++a) EXPECT_EQ(o.atom_types[perm[a]], o.atom_types[a]);
        }
    // The batch coupling keeps types too: each paired sample is a type-preserving permutation.
    const Coupled c = run(o, x0, x1, B, n, d);
    EXPECT_TRUE(test::not_all_zero(c.x1p));
    for (int i = 0; i < B; ++i) {
        eqot_align_pair(o, &x0[i * n * d], &x1[c.pairing[i] * n * d], n, d, perm.data(), r);
        for (int a = 0; a < n; ++a) EXPECT_EQ(o.atom_types[perm[a]], o.atom_types[a]);
    }
}

TEST(Coupling, FloatMatchesDouble) {
    // Float inputs are widened and coupled in double; x1_paired is rounded back to float.
    constexpr double kFloatTol = 1e-5;
    auto gen = test::rng(660);
    const int B = 6, n = 13, d = 3;
    const std::vector<double> a = prior(B, n, d, gen), b = data(B, n, d, gen);
    const std::vector<float> af(a.begin(), a.end()), bf(b.begin(), b.end());
    const std::vector<double> ar(af.begin(), af.end()), br(bf.begin(), bf.end());
    for (CouplingKind k : {CouplingKind::fm, CouplingKind::ot, CouplingKind::eqot}) {
        const Coupled ref = run(opts(k), ar, br, B, n, d);
        std::vector<float> out(B * n * d);
        std::vector<int64_t> pairing(B);
        std::vector<double> cost(B);
        couple(opts(k), TensorView<const float>(af.data(), Shape{B, n, d}),
               TensorView<const float>(bf.data(), Shape{B, n, d}),
               TensorView<float>(out.data(), Shape{B, n, d}),
               TensorView<int64_t>(pairing.data(), Shape{B}),
               TensorView<double>(cost.data(), Shape{B}));
        EXPECT_EQ(pairing, ref.pairing);
        EXPECT_ALL_CLOSE(cost, ref.cost, 0.0, 1e-12);
        EXPECT_ALL_CLOSE(out, ref.x1p, kFloatTol, kFloatTol);
    }
}

TEST(Coupling, StartScoresAndTheChoiceOfTheBest) {
    // The nearest-neighbour score of a start (src/common/eqot_starts.h) against a plain double
    // loop, with and without types.
    auto gen = test::rng(690);
    const int n = 11, d = 3;
    const std::vector<double> x0 = prior(1, n, d, gen), x1 = data(1, n, d, gen);
    const std::vector<double> r = random_rotation(d, gen);
    std::vector<int> types(n);
    for (int a = 0; a < n; ++a) types[a] = a % 3;
    std::vector<double> scratch((d + 1) * n);
    for (const bool typed : {false, true}) {
        double expected = 0.0;
        for (int a = 0; a < n; ++a) {
            double low = std::numeric_limits<double>::infinity();
            for (int b = 0; b < n; ++b) {
                if (typed && types[a] != types[b]) continue;
                double s = 0.0;
                for (int k = 0; k < d; ++k) {
                    double v = 0.0;
                    for (int c = 0; c < d; ++c) v += r[k * d + c] * x1[b * d + c];
                    s += (x0[a * d + k] - v) * (x0[a * d + k] - v);
                }
                low = std::min(low, s);
            }
            expected += low;
        }
        const double got = eqot_starts::nearest_score<3>(
            r.data(), x0.data(), x1.data(), n, typed ? types.data() : nullptr, scratch.data());
        EXPECT_NEAR(got, expected, 1e-12 * expected) << typed;
    }
    // The k lowest scores stay, in their order; ties go to the earlier start, NaN last.
    const auto keep = [](std::vector<double> score, int k) {
        std::vector<double> starts = {10, 11, 12, 13};
        const int kept = eqot_starts::keep_best<1>(starts.data(), score.data(), 4, k);
        starts.resize(kept);
        return starts;
    };
    EXPECT_EQ(keep({3, 1, 3, 0}, 1), (std::vector<double>{13}));
    EXPECT_EQ(keep({3, 1, 3, 0}, 2), (std::vector<double>{11, 13}));
    EXPECT_EQ(keep({3, 1, 3, 0}, 3), (std::vector<double>{10, 11, 13}));
    const double nan = std::numeric_limits<double>::quiet_NaN();
    EXPECT_EQ(keep({nan, 2, nan, 1}, 3), (std::vector<double>{10, 11, 13}));
    EXPECT_EQ(keep({nan, 2, nan, 1}, 1), (std::vector<double>{13}));
    for (const int k : {0, 4, 5}) EXPECT_EQ(keep({3, 1, 3, 0}, k).size(), 4u) << k;
}

TEST(Coupling, ArgumentErrors) {
    std::vector<double> x(2 * 4 * 2), y(2 * 4 * 2), out(2 * 4 * 2);
    const TensorView<const double> xv(x.data(), Shape{2, 4, 2}), yv(y.data(), Shape{2, 4, 2});
    CouplingOptions o;
    o.atom_types = {0, 1};
    EXPECT_THROW(couple(o, xv, yv, TensorView<double>(out.data(), Shape{2, 4, 2})), Error);
    o.atom_types.clear();
    EXPECT_THROW(couple(o, xv, TensorView<const double>(y.data(), Shape{2, 2, 4}),
                        TensorView<double>(out.data(), Shape{2, 4, 2})),
                 Error);
    EXPECT_THROW(couple(o, xv, yv, TensorView<double>(y.data(), Shape{2, 4, 2})),
                 Error);  // aliasing x1
    CouplingOptions negative = o;
    negative.max_starts = -1;
    EXPECT_THROW(couple(negative, xv, yv, TensorView<double>(out.data(), Shape{2, 4, 2})), Error);
    x[3] = std::nan("");
    EXPECT_THROW(couple(o, xv, yv, TensorView<double>(out.data(), Shape{2, 4, 2})), Error);
    std::vector<double> x4(2 * 4 * 4), o4(2 * 4 * 4);
    EXPECT_THROW(couple(o, TensorView<const double>(x4.data(), Shape{2, 4, 4}),
                        TensorView<const double>(x4.data(), Shape{2, 4, 4}),
                        TensorView<double>(o4.data(), Shape{2, 4, 4})),
                 Error);
    EXPECT_NO_THROW(couple(o, TensorView<const double>(nullptr, Shape{0, 4, 2}),
                           TensorView<const double>(nullptr, Shape{0, 4, 2}),
                           TensorView<double>(nullptr, Shape{0, 4, 2})));
    EXPECT_EQ(coupling_workspace_bytes(Device::cpu, o, 256, 55, 3), 0u);
}

}  // namespace
}  // namespace eqflow
