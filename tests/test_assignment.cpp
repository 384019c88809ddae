// Linear sum assignment, CPU reference: brute force, known optima, special values, shapes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "cpu/assignment_cpu.h"
#include "cpu/assignment_simd.h"
#include "cpu/assignment_small.h"
#include "eqflow/assignment.h"
#include "eqflow/error.h"
#include "eqflow/tensor.h"
#include "test_util.h"

namespace eqflow {
namespace {

const double kInf = std::numeric_limits<double>::infinity();
// Random real costs in [0, 1): the solver's total and brute force sum the same n <= 8 numbers in
// different orders; double rounding is ~1e-16 per addition.
constexpr double kSumRtol = 1e-13;

// Problem p of cost [P][n][n]: min over all n! permutations of sum_i c[i][perm[i]] (+inf when
// every permutation is forbidden).
double brute_force(const std::vector<double>& cost, int p, int n) {
    const double* c = cost.data() + static_cast<size_t>(p) * n * n;
    std::vector<int> perm(n);
    std::iota(perm.begin(), perm.end(), 0);
    double best = kInf;
    do {
        double s = 0.0;
        for (int i = 0; i < n; ++i) s += c[i * n + perm[i]];
        best = std::min(best, s);
    } while (std::next_permutation(perm.begin(), perm.end()));
    return best;
}

bool is_permutation(const int64_t* p, int n) {
    std::vector<int> seen(n, 0);
    for (int i = 0; i < n; ++i) {
        if (p[i] < 0 || p[i] >= n || seen[p[i]]) return false;
        seen[p[i]] = 1;
    }
    return true;
}

struct Solved {
    std::vector<int64_t> perm;
    std::vector<double> total;
    std::vector<int32_t> status;
};

template <class T>
Solved solve(const std::vector<T>& cost, int64_t P, int64_t n, bool with_status = false) {
    Solved s{std::vector<int64_t>(P * n), std::vector<double>(P), std::vector<int32_t>(P, -7)};
    linear_sum_assignment(
        TensorView<const T>(cost.data(), Shape{P, n, n}),
        TensorView<int64_t>(s.perm.data(), Shape{P, n}),
        TensorView<double>(s.total.data(), Shape{P}),
        with_status ? TensorView<int32_t>(s.status.data(), Shape{P}) : TensorView<int32_t>());
    return s;
}

// Checks that each perm row is a permutation and that total equals the cost it selects.
template <class T>
void expect_consistent(const std::vector<T>& cost, const Solved& s, int64_t P, int64_t n) {
    for (int64_t p = 0; p < P; ++p) {
        ASSERT_TRUE(is_permutation(s.perm.data() + p * n, static_cast<int>(n))) << "problem " << p;
        double sum = 0.0;
        for (int64_t i = 0; i < n; ++i)
            sum += static_cast<double>(cost[(p * n + i) * n + s.perm[p * n + i]]);
        EXPECT_EQ(sum, s.total[p]) << "problem " << p;
    }
}

// Consistent (expect_consistent), and each problem's total is brute force's optimum to rtol (the
// two sum in different orders).
void expect_optimal(const std::vector<double>& cost, const Solved& s, int P, int n, double rtol) {
    expect_consistent(cost, s, P, n);
    for (int p = 0; p < P; ++p) {
        const double bf = brute_force(cost, p, n);
        EXPECT_NEAR(s.total[p], bf, rtol * bf) << "problem " << p;
    }
}

TEST(Assignment, BruteForceRandomReal) {
    auto gen = test::rng(401);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    for (int n = 1; n <= 8; ++n) {
        const int P = n <= 6 ? 40 : 6;
        std::vector<double> cost(P * n * n);
        for (auto& c : cost) c = u(gen);
        SCOPED_TRACE(::testing::Message() << "n=" << n);
        expect_optimal(cost, solve(cost, P, n), P, n, kSumRtol);
    }
}

TEST(Assignment, BruteForceIntegersExact) {
    // Small integer ranges make many ties and duplicate rows; integer sums are exact in double.
    auto gen = test::rng(402);
    for (int range : {2, 5, 100}) {
        std::uniform_int_distribution<int> u(0, range - 1);
        for (int n = 1; n <= 8; ++n) {
            const int P = n <= 6 ? 30 : 5;
            std::vector<double> cost(P * n * n);
            for (auto& c : cost) c = u(gen);
            const Solved s = solve(cost, P, n);
            expect_consistent(cost, s, P, n);
            std::vector<float> costf(cost.begin(), cost.end());
            const Solved sf = solve(costf, P, n);
            for (int p = 0; p < P; ++p) {
                const double bf = brute_force(cost, p, n);
                EXPECT_EQ(s.total[p], bf) << "range " << range << " n=" << n << " p=" << p;
                EXPECT_EQ(sf.total[p], bf) << "float, range " << range << " n=" << n << " p=" << p;
            }
        }
    }
}

TEST(Assignment, TiesAndDuplicateRows) {
    const int n = 7;
    // All rows identical: every permutation costs the sum of the row.
    std::vector<double> dup(n * n);
    for (int i = 0; i < n; ++i)
        for (int j = 0; j < n; ++j) dup[i * n + j] = (j * 37) % 11;
    Solved s = solve(dup, 1, n);
    expect_consistent(dup, s, 1, n);
    double row_sum = 0.0;
    for (int j = 0; j < n; ++j) row_sum += dup[j];
    EXPECT_EQ(s.total[0], row_sum);
    // A constant matrix and the zero matrix.
    for (double v : {0.0, 3.0}) {
        std::vector<double> c(n * n, v);
        s = solve(c, 1, n);
        expect_consistent(c, s, 1, n);
        EXPECT_EQ(s.total[0], v * n);
    }
}

TEST(Assignment, VeryLargeAndVerySmallCosts) {
    // The optimum of an integer matrix scaled by 1e30 or 1e-30 is the scaled optimum: the
    // potentials must neither overflow nor underflow. Scaling rounds each entry (~1e-16
    // relative), so the totals agree to summation rounding.
    constexpr double kScaledRtol = 1e-13;
    auto gen = test::rng(403);
    std::uniform_int_distribution<int> u(1, 50);
    const int n = 8, P = 6;
    for (double scale : {1e30, 1e-30, 1e300 / 1e3}) {
        std::vector<double> cost(P * n * n);
        for (auto& c : cost) c = u(gen) * scale;
        SCOPED_TRACE(::testing::Message() << "scale " << scale);
        expect_optimal(cost, solve(cost, P, n), P, n, kScaledRtol);
    }
}

TEST(Assignment, NegativeCosts) {
    auto gen = test::rng(404);
    std::uniform_int_distribution<int> u(-1000, 1000);
    const int n = 6, P = 20;
    std::vector<double> cost(P * n * n);
    for (auto& c : cost) c = u(gen);
    const Solved s = solve(cost, P, n);
    for (int p = 0; p < P; ++p) {
        EXPECT_EQ(s.total[p], brute_force(cost, p, n)) << p;
    }
}

TEST(Assignment, LargeNAgainstSortedMatching) {
    // Points a_i, b_j on a line with cost (a_i - b_j)^2: matching by rank is optimal (the
    // squared distance is submodular), an optimum known without search, for n up to 300.
    constexpr double kRtol = 1e-12;  // sums of 300 positive terms in different orders
    auto gen = test::rng(405);
    std::normal_distribution<double> g(0.0, 1.0);
    for (int n : {13, 55, 100, 300}) {
        std::vector<double> a(n), b(n), cost(n * n);
        for (auto& v : a) v = g(gen);
        for (auto& v : b) v = g(gen);
        for (int i = 0; i < n; ++i)
            for (int j = 0; j < n; ++j) cost[i * n + j] = (a[i] - b[j]) * (a[i] - b[j]);
        std::vector<double> as = a, bs = b;
        std::sort(as.begin(), as.end());
        std::sort(bs.begin(), bs.end());
        double expected = 0.0;
        for (int i = 0; i < n; ++i) expected += (as[i] - bs[i]) * (as[i] - bs[i]);
        std::vector<int64_t> perm(n);
        const double total = linear_sum_assignment_host(cost.data(), n, perm.data());
        EXPECT_TRUE(is_permutation(perm.data(), n));
        EXPECT_NEAR(total, expected, kRtol * expected) << "n=" << n;
    }
}

TEST(Assignment, ForbiddenPairsRespected) {
    auto gen = test::rng(406);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    const int n = 7, P = 30;
    std::vector<double> cost(P * n * n);
    for (int p = 0; p < P; ++p)
        for (int i = 0; i < n; ++i)
            for (int j = 0; j < n; ++j) {
                // About half the pairs forbidden, the diagonal kept so every problem is feasible.
                const double v = u(gen);
                cost[(p * n + i) * n + j] = (i != j && v < 0.5) ? kInf : v;
            }
    const Solved s = solve(cost, P, n, /*with_status=*/true);
    expect_consistent(cost, s, P, n);
    for (int p = 0; p < P; ++p) {
        const double bf = brute_force(cost, p, n);
        ASSERT_TRUE(std::isfinite(bf));
        EXPECT_NEAR(s.total[p], bf, kSumRtol * bf) << p;
        EXPECT_EQ(s.status[p], static_cast<int32_t>(AssignmentStatus::ok));
    }
}

TEST(Assignment, InfeasibleIsReported) {
    const int n = 4;
    std::vector<double> cost(3 * n * n, 1.0);
    // Problem 1: rows 0 and 1 may only take column 2 (Hall's condition fails, no row is all +inf).
    for (int j = 0; j < n; ++j) {
        if (j == 2) continue;
        cost[(1 * n + 0) * n + j] = kInf;
        cost[(1 * n + 1) * n + j] = kInf;
    }
    // Problem 2: an all-forbidden row.
    for (int j = 0; j < n; ++j) cost[(2 * n + 3) * n + j] = kInf;
    const Solved s = solve(cost, 3, n, /*with_status=*/true);
    EXPECT_EQ(s.status[0], static_cast<int32_t>(AssignmentStatus::ok));
    EXPECT_EQ(s.total[0], 4.0);
    for (int p : {1, 2}) {
        EXPECT_EQ(s.status[p], static_cast<int32_t>(AssignmentStatus::infeasible)) << p;
        EXPECT_EQ(s.total[p], kInf) << p;
        for (int i = 0; i < n; ++i) EXPECT_EQ(s.perm[p * n + i], -1);
    }
    // Without a status view the call throws, naming the first infeasible problem.
    try {
        solve(cost, 3, n);
        FAIL() << "no error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("problem 1 is infeasible"), std::string::npos)
            << e.what();
    }
}

TEST(Assignment, NanAndMinusInfAreErrors) {
    const int n = 3;
    for (double bad : {std::nan(""), -kInf}) {
        std::vector<double> cost(2 * n * n, 1.0);
        cost[n * n + 4] = bad;
        try {
            solve(cost, 2, n, true);
            FAIL() << "no error for " << bad;
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("problem 1 has a NaN or -inf"), std::string::npos)
                << e.what();
        }
        std::vector<float> costf(cost.begin(), cost.end());
        EXPECT_THROW(solve(costf, 2, n, true), Error);
    }
}

TEST(Assignment, SmallSolverMatchesGeneralBitForBit) {
    // n <= 32 takes the fixed-size solver (src/cpu/assignment_small.h), larger n the general one.
    // Embedding an n-problem C as the top-left block of a 40 x 40 one (+inf across the blocks; the
    // extra block prefers its diagonal) hands the same problem to the general solver: its rows
    // 0..n-1 see C's columns in the same order, so every step and every tie is decided the same
    // way and the permutations and totals must be identical -- on random reals and on small
    // integers, which tie constantly.
    constexpr int kBig = 40;
    auto gen = test::rng(470);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    std::uniform_int_distribution<int> small_int(0, 3);
    for (int n : {1, 2, 3, 4, 5, 8, 13, 16, 22, 31, 32}) {
        for (int kind = 0; kind < 2; ++kind) {
            const int P = 12;
            std::vector<double> cost(static_cast<size_t>(P) * n * n);
            for (auto& c : cost) c = kind == 0 ? u(gen) : small_int(gen);
            if (kind == 1 && n >= 3) cost[1] = kInf;  // a forbidden pair in problem 0
            std::vector<double> big(static_cast<size_t>(P) * kBig * kBig, kInf);
            for (int p = 0; p < P; ++p) {
                double* b = big.data() + static_cast<size_t>(p) * kBig * kBig;
                for (int i = 0; i < n; ++i)
                    for (int j = 0; j < n; ++j) b[i * kBig + j] = cost[(p * n + i) * n + j];
                for (int i = n; i < kBig; ++i)
                    for (int j = n; j < kBig; ++j) b[i * kBig + j] = i == j ? 0.0 : 1.0;
            }
            SCOPED_TRACE(::testing::Message() << "n=" << n << " kind=" << kind);
            const Solved fast = solve(cost, P, n), general = solve(big, P, kBig);
            expect_consistent(cost, fast, P, n);
            for (int p = 0; p < P; ++p) {
                EXPECT_EQ(fast.total[p], general.total[p]) << "problem " << p;
                for (int i = 0; i < n; ++i)
                    EXPECT_EQ(fast.perm[p * n + i], general.perm[p * kBig + i]) << "problem " << p;
            }
        }
    }
}

#if EQFLOW_HAVE_SIMD_ASSIGNMENT
// The AVX-512 copy of the fixed-size solver (src/cpu/assignment_simd.h, what the eqot coupling
// runs on CPUs that have it) against solve_assignment_small on the same problems: the same
// permutation and the same duals, bit for bit, on random reals, on small integers (ties in every
// scan, so the `remaining`-order tie rules are exercised), with forbidden (+inf) pairs, and on
// infeasible problems (both must fail).
// One problem for the AVX-512 solver tests, dense [n][n] and padded [n][kW] (+inf beyond n):
// kind 0 random reals, 1 small integers (ties in every scan, so the `remaining`-order tie rules
// are exercised), 2 small integers with forbidden (+inf) pairs (some problems infeasible).
void simd_problem(int n, int kW, int kind, std::mt19937_64& gen, std::vector<double>& dense,
                  std::vector<double>& padded) {
    std::uniform_real_distribution<double> u(0.0, 1.0);
    std::uniform_int_distribution<int> small_int(0, 3);
    dense.assign(n * n, 0.0);
    padded.assign(n * kW, kInf);
    for (int i = 0; i < n; ++i)
        for (int j = 0; j < n; ++j) {
            double c = kind == 0 ? u(gen) : small_int(gen);
            if (kind == 2 && small_int(gen) == 0) c = kInf;
            dense[i * n + j] = padded[i * kW + j] = c;
        }
}

// The padded solver under test: the AVX-512 copy, or its AVX2 twin.
template <int NV>
bool solve_padded_with(bool avx2, const double* cost, int n, cpu::SimdAssignment<NV>& s) {
    return avx2 ? cpu::solve_assignment_avx2<NV>(cost, n, s)
                : cpu::solve_assignment_simd<NV>(cost, n, s);
}

template <int NV>
void simd_matches_small(bool avx2, int n, int kind, std::mt19937_64& gen) {
    constexpr int kW = 8 * NV;
    std::vector<double> dense, padded;
    simd_problem(n, kW, kind, gen, dense, padded);
    cpu::SmallAssignment a;
    cpu::SimdAssignment<NV> b;
    const bool ok_a = cpu::solve_assignment_small(dense.data(), n, a);
    const bool ok_b = solve_padded_with<NV>(avx2, padded.data(), n, b);
    ASSERT_EQ(ok_a, ok_b);
    if (!ok_a) return;
    for (int i = 0; i < n; ++i) {
        EXPECT_EQ(a.col4row[i], b.col4row[i]) << "row " << i;
        EXPECT_EQ(a.u[i], b.u[i]) << "row " << i;
        EXPECT_EQ(a.v[i], b.v[i]) << "column " << i;
    }
}

// Beyond 32 columns (NV up to 8, LJ55's particle assignments) the fixed-size AVX-512 solver has
// no fixed-size scalar twin; it must match the general plain-loop solver instead.
template <int NV>
void simd_matches_scalar(bool avx2, int n, int kind, std::mt19937_64& gen) {
    constexpr int kW = 8 * NV;
    std::vector<double> dense, padded;
    simd_problem(n, kW, kind, gen, dense, padded);
    std::vector<int64_t> perm(n);
    double total = 0.0;
    cpu::AssignmentScratch a;
    cpu::SimdAssignment<NV> b;
    const bool ok_a = cpu::solve_assignment_scalar(dense.data(), n, perm.data(), &total, a) ==
                      AssignmentStatus::ok;
    const bool ok_b = solve_padded_with<NV>(avx2, padded.data(), n, b);
    ASSERT_EQ(ok_a, ok_b);
    if (!ok_a) return;
    for (int i = 0; i < n; ++i) {
        EXPECT_EQ(perm[i], b.col4row[i]) << "row " << i;
        EXPECT_EQ(a.u[i], b.u[i]) << "row " << i;
        EXPECT_EQ(a.v[i], b.v[i]) << "column " << i;
    }
}

void padded_solver_matches(bool avx2) {
    auto gen = test::rng(475);
    for (int rep = 0; rep < 200; ++rep)
        for (int kind = 0; kind < 3; ++kind) {
            SCOPED_TRACE(::testing::Message() << "rep=" << rep << " kind=" << kind);
            for (int n : {1, 2, 3, 4, 7, 8}) simd_matches_small<1>(avx2, n, kind, gen);
            for (int n : {9, 13, 16}) simd_matches_small<2>(avx2, n, kind, gen);
            for (int n : {17, 22, 31, 32}) simd_matches_small<4>(avx2, n, kind, gen);
            for (int n : {1, 9, 33, 40, 55, 63, 64}) simd_matches_scalar<8>(avx2, n, kind, gen);
            if (::testing::Test::HasFailure()) return;
        }
}

TEST(Assignment, SimdSolverMatchesSmallBitForBit) {
    if (!cpu::simd_assignment_available()) GTEST_SKIP() << "no AVX-512 on this CPU";
    padded_solver_matches(false);
}

// The AVX2 twin (what CPUs without AVX-512 run), on the same problems.
TEST(Assignment, Avx2SolverMatchesSmallBitForBit) {
    if (!cpu::avx2_assignment_available()) GTEST_SKIP() << "no AVX2 on this CPU";
    padded_solver_matches(true);
}
#endif

// The AVX-512 copy of the general solver (src/cpu/assignment_wide.cpp: what solve_assignment
// runs for n > 32, e.g. the couplings' B x B assignment) against the plain-loop solver on the same
// problems: the same status, permutation and total, bit for bit. Kinds: random reals; small
// integers (ties in nearly every scan, so the `remaining`-order tie rules decide); reals with
// +inf entries (forbidden pairs, some problems infeasible); integers with whole +inf rows or
// columns; float input. Sizes around the vector width and the sizes the couplings use.
template <class T>
void wide_matches_scalar(bool avx2, int n, int kind, std::mt19937_64& gen) {
    std::uniform_real_distribution<double> u(0.0, 1.0);
    std::uniform_int_distribution<int> small_int(0, 3), pick(0, n - 1);
    std::vector<T> cost(static_cast<size_t>(n) * n);
    for (auto& c : cost) {
        double x = (kind == 0 || kind == 2) ? u(gen) : small_int(gen);
        if (kind == 2 && small_int(gen) == 0 && u(gen) < 0.7) x = kInf;
        c = static_cast<T>(x);
    }
    if (kind == 3 && u(gen) < 0.3) {  // a row or a column without a finite entry
        const int k = pick(gen);
        for (int m = 0; m < n; ++m)
            cost[u(gen) < 0.5 ? k * n + m : m * n + k] = static_cast<T>(kInf);
    }
    std::vector<int64_t> pa(n, -5), pb(n, -5);
    double ta = -1.0, tb = -2.0;
    cpu::AssignmentScratch sa, sb;
    const AssignmentStatus a = cpu::solve_assignment_scalar(cost.data(), n, pa.data(), &ta, sa);
    const AssignmentStatus b =
        avx2 ? cpu::solve_assignment_wide_avx2(cost.data(), n, pb.data(), &tb, sb)
             : cpu::solve_assignment_wide(cost.data(), n, pb.data(), &tb, sb);
    ASSERT_EQ(a, b);
    EXPECT_EQ(ta, tb);
    EXPECT_EQ(pa, pb);
}

void wide_solver_matches(bool avx2) {
    auto gen = test::rng(476);
    for (int kind = 0; kind < 4; ++kind)
        for (int n : {1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 40, 63, 64, 65, 100, 128, 129, 256}) {
            SCOPED_TRACE(::testing::Message() << "n=" << n << " kind=" << kind);
            const int reps = n <= 64 ? 40 : 6;
            for (int rep = 0; rep < reps; ++rep) {
                wide_matches_scalar<double>(avx2, n, kind, gen);
                if (rep % 4 == 0) wide_matches_scalar<float>(avx2, n, kind, gen);
            }
            if (::testing::Test::HasFailure()) return;
        }
}

TEST(Assignment, WideSolverMatchesScalarBitForBit) {
    if (!cpu::simd_assignment_available()) GTEST_SKIP() << "no AVX-512 on this CPU";
    wide_solver_matches(false);
}

// Its AVX2 twin (CPUs without AVX-512), on the same problems.
TEST(Assignment, WideAvx2SolverMatchesScalarBitForBit) {
    if (!cpu::avx2_assignment_available()) GTEST_SKIP() << "no AVX2 on this CPU";
    wide_solver_matches(true);
}

TEST(Assignment, BatchedEqualsOneByOne) {
    // Problems are spread over the pool's threads in chunks; each one's result is its own.
    auto gen = test::rng(480);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    for (int n : {5, 40}) {
        const int P = 300;
        std::vector<double> cost(static_cast<size_t>(P) * n * n);
        for (auto& c : cost) c = u(gen);
        const Solved all = solve(cost, P, n);
        Solved one{std::vector<int64_t>(P * n), std::vector<double>(P), {}};
        for (int p = 0; p < P; ++p) {
            const std::vector<double> c(cost.begin() + p * n * n, cost.begin() + (p + 1) * n * n);
            const Solved s = solve(c, 1, n);
            std::copy(s.perm.begin(), s.perm.end(), one.perm.begin() + p * n);
            one.total[p] = s.total[0];
        }
        EXPECT_EQ(all.perm, one.perm) << "n=" << n;
        EXPECT_EQ(all.total, one.total) << "n=" << n;
    }
}

TEST(Assignment, EdgeSizesAndShapes) {
    // Empty batch, n = 1, n = 2, and the single-matrix [n, n] form.
    EXPECT_NO_THROW(solve(std::vector<double>{}, 0, 5));
    Solved s = solve(std::vector<double>{2.5}, 1, 1);
    EXPECT_EQ(s.perm[0], 0);
    EXPECT_EQ(s.total[0], 2.5);
    s = solve(std::vector<double>{3, 1, 1, 3}, 1, 2);
    EXPECT_EQ(s.perm[0], 1);
    EXPECT_EQ(s.perm[1], 0);
    EXPECT_EQ(s.total[0], 2.0);
    std::vector<double> one = {4, 1, 3, 2, 0, 5, 3, 2, 2};
    std::vector<int64_t> perm(3, -5);
    double total = 0;
    linear_sum_assignment(TensorView<const double>(one.data(), Shape{3, 3}),
                          TensorView<int64_t>(perm.data(), Shape{3}),
                          TensorView<double>(&total, Shape{1}));
    EXPECT_EQ(total, 5.0);  // 1 + 2 + 2
    EXPECT_EQ(perm, (std::vector<int64_t>{1, 0, 2}));
    // Shape errors.
    std::vector<double> rect(2 * 3);
    EXPECT_THROW(linear_sum_assignment(TensorView<const double>(rect.data(), Shape{2, 3}),
                                       TensorView<int64_t>(perm.data(), Shape{2})),
                 Error);
    EXPECT_THROW(linear_sum_assignment(TensorView<const double>(one.data(), Shape{1, 3, 3}),
                                       TensorView<int64_t>(perm.data(), Shape{1, 2})),
                 Error);
    EXPECT_EQ(assignment_workspace_bytes(Device::cpu, 100, 55), 0u);
}

}  // namespace
}  // namespace eqflow
