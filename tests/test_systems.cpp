// Target systems on the CPU reference path: finite differences, invariances, minima, conventions.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "eqflow/error.h"
#include "eqflow/systems.h"
#include "test_util.h"

namespace eqflow {
namespace {

// Random configurations without overlaps: Gaussian with the system's typical spread, rejected
// while two particles are closer than r_min.
// Random configurations without overlaps at the system's typical spread.
std::vector<double> random_config(const System& s, std::mt19937_64& gen) {
    if (s.kind == PotentialKind::double_well)
        return test::random_configuration(s.n, s.d, 2.0, 0.5, gen);
    return test::random_configuration(s.n, s.d, 0.5 * std::cbrt(static_cast<double>(s.n)), 0.85,
                                      gen);
}

const char* const kSystems[] = {"dw4", "lj13", "lj:5", "lj55"};

TEST(Systems, NamesAndErrors) {
    EXPECT_EQ(make_system("dw4").n, 4);
    EXPECT_EQ(make_system("dw4").d, 2);
    EXPECT_EQ(make_system("lj13").n, 13);
    EXPECT_EQ(make_system("lj55").n, 55);
    EXPECT_EQ(make_system("lj:7").n, 7);
    EXPECT_EQ(make_system("lj13").dof(), 36);
    for (const char* bad : {"dw5", "lj:", "lj:1", "lj:x", "lj:3x", ""}) {
        EXPECT_THROW(make_system(bad), Error) << bad;
    }
}

// Central differences in double: step 1e-5 gives truncation ~h^2 |E'''| ~ 1e-10 and rounding
// ~eps |E| / h ~ 1e-11 relative; 1e-6 relative to the largest component is a safe bound.
TEST(Systems, ForcesMatchFiniteDifferences) {
    constexpr double kStep = 1e-5;
    constexpr double kRelTol = 1e-6;
    auto gen = test::rng(11);
    for (const char* name : kSystems) {
        const System s = make_system(name);
        for (int trial = 0; trial < 3; ++trial) {
            std::vector<double> x = random_config(s, gen);
            std::vector<double> grad(x.size()), fd(x.size());
            energy_reference(s, x.data(), grad.data());
            for (size_t k = 0; k < x.size(); ++k) {
                std::vector<double> xp = x, xm = x;
                xp[k] += kStep;
                xm[k] -= kStep;
                fd[k] =
                    (energy_reference(s, xp.data()) - energy_reference(s, xm.data())) / (2 * kStep);
            }
            double scale = 0;
            for (double g : grad) scale = std::max(scale, std::fabs(g));
            EXPECT_ALL_CLOSE(grad, fd, kRelTol * scale, 0.0) << name;
            // The batched API returns forces = -grad and u = E / kT.
            std::vector<double> u(1), f(x.size());
            energy_forces(s, TensorView<const double>(x.data(), Shape{1, s.n, s.d}),
                          TensorView<double>(u.data(), Shape{1}),
                          TensorView<double>(f.data(), Shape{1, s.n, s.d}));
            EXPECT_DOUBLE_EQ(u[0], energy_reference(s, x.data()) / s.kT);
            for (size_t k = 0; k < x.size(); ++k) EXPECT_DOUBLE_EQ(f[k], -grad[k]);
        }
    }
}

// The Laplacian (for the configurational temperature) against second differences of E.
TEST(Systems, LaplacianMatchesSecondDifferences) {
    constexpr double kStep = 1e-4;  // second differences: truncation ~h^2, rounding ~eps |E| / h^2
    auto gen = test::rng(12);
    for (const char* name : kSystems) {
        const System s = make_system(name);
        std::vector<double> x = random_config(s, gen);
        double lap = 0;
        const double e0 = energy_reference(s, x.data(), nullptr, &lap);
        double fd = 0;
        for (size_t k = 0; k < x.size(); ++k) {
            std::vector<double> xp = x, xm = x;
            xp[k] += kStep;
            xm[k] -= kStep;
            fd += (energy_reference(s, xp.data()) - 2 * e0 + energy_reference(s, xm.data())) /
                  (kStep * kStep);
        }
        EXPECT_NEAR(lap, fd, 1e-4 * std::max(1.0, std::fabs(lap))) << name;
    }
}

TEST(Systems, InvariantUnderRotationReflectionPermutationTranslation) {
    auto gen = test::rng(13);
    for (const char* name : kSystems) {
        const System s = make_system(name);
        const std::vector<double> x = random_config(s, gen);
        const double e = energy_reference(s, x.data());
        for (bool reflect : {false, true}) {
            const std::vector<double> y =
                test::rotate(x, test::random_orthogonal(s.d, reflect, gen), s.d);
            EXPECT_NEAR(energy_reference(s, y.data()), e, 1e-10 * std::max(1.0, std::fabs(e)))
                << name;
        }
        std::vector<int> perm(static_cast<size_t>(s.n));
        std::iota(perm.begin(), perm.end(), 0);
        std::shuffle(perm.begin(), perm.end(), gen);
        std::vector<double> p(x.size());
        for (int i = 0; i < s.n; ++i)
            for (int a = 0; a < s.d; ++a) p[i * s.d + a] = x[perm[i] * s.d + a];
        EXPECT_NEAR(energy_reference(s, p.data()), e, 1e-10 * std::max(1.0, std::fabs(e))) << name;
        std::vector<double> t = x;
        for (int i = 0; i < s.n; ++i)
            for (int a = 0; a < s.d; ++a) t[i * s.d + a] += 3.7 * (a + 1);
        EXPECT_NEAR(energy_reference(s, t.data()), e, 1e-9 * std::max(1.0, std::fabs(e))) << name;
    }
}

TEST(Systems, KnownMinimaAndConventions) {
    // DW4 pair potential: minima at |r - 4| = sqrt(4 / 1.8), value -b^2 / (4a) = -40/9.
    const System dw = make_system("dw4");
    const double r_star = std::sqrt(4.0 / 1.8);
    for (double r : {4.0 - r_star, 4.0 + r_star}) {
        double phi, dphi, d2phi;
        pair_potential(dw, r, &phi, &dphi, &d2phi);
        EXPECT_NEAR(dphi, 0.0, 1e-12);
        EXPECT_GT(d2phi, 0.0);
        EXPECT_NEAR(phi, -40.0 / 9.0, 1e-12);
    }
    // LJ: the ordered-pair term eps[(1/r)^12 - 2 (1/r)^6] has its minimum -1 at r = 1.
    const System lj = make_system("lj:2");
    double phi, dphi, d2phi;
    pair_potential(lj, 1.0, &phi, &dphi, &d2phi);
    EXPECT_NEAR(dphi, 0.0, 1e-12);
    EXPECT_GT(d2phi, 0.0);
    EXPECT_DOUBLE_EQ(phi, -1.0);
    // Two LJ particles at distance r: E = 2 phi(r) (ordered pairs) + 0.5 * 2 * (r/2)^2.
    const double r = 1.3;
    const double x2[6] = {0, 0, 0, r, 0, 0};
    pair_potential(lj, r, &phi);
    EXPECT_NEAR(energy_reference(lj, x2), 2 * phi + 0.25 * r * r, 1e-14);
    double e_pair;
    pair_potential(dw, 4 + r_star, &e_pair);
    EXPECT_NEAR(e_pair, -40.0 / 9.0, 1e-12);
    // A square of side 4 + r*: four sides at the minimum, two diagonals at sqrt(2)(4 + r*).
    const double a = 4 + r_star;
    const double sq[8] = {0, 0, a, 0, a, a, 0, a};
    double e_diag;
    pair_potential(dw, std::sqrt(2.0) * a, &e_diag);
    EXPECT_NEAR(energy_reference(dw, sq), 4 * e_pair + 2 * e_diag, 1e-10);
}

TEST(Systems, BatchedArgumentChecks) {
    const System s = make_system("lj13");
    std::vector<double> x(2 * 13 * 3, 0.5), u(2);
    EXPECT_THROW(energy_forces(s, TensorView<const double>(x.data(), Shape{2, 13, 2}),
                               TensorView<double>(u.data(), Shape{2})),
                 Error);
    EXPECT_THROW(energy_forces(s, TensorView<const double>(x.data(), Shape{2, 13, 3}),
                               TensorView<double>(u.data(), Shape{3})),
                 Error);
    // An empty batch is fine.
    EXPECT_NO_THROW(energy_forces(s, TensorView<const double>(x.data(), Shape{0, 13, 3}),
                                  TensorView<double>(u.data(), Shape{0})));
}

TEST(Systems, Float32PathAgreesWithDouble) {
    auto gen = test::rng(14);
    const System s = make_system("lj13");
    const int B = 5;
    std::vector<double> x;
    for (int b = 0; b < B; ++b) {
        auto c = random_config(s, gen);
        x.insert(x.end(), c.begin(), c.end());
    }
    std::vector<float> xf(x.begin(), x.end());
    std::vector<double> u(B), f(x.size());
    std::vector<float> uf(B), ff(x.size());
    energy_forces(s, TensorView<const double>(x.data(), Shape{B, 13, 3}),
                  TensorView<double>(u.data(), Shape{B}),
                  TensorView<double>(f.data(), Shape{B, 13, 3}));
    energy_forces(s, TensorView<const float>(xf.data(), Shape{B, 13, 3}),
                  TensorView<float>(uf.data(), Shape{B}),
                  TensorView<float>(ff.data(), Shape{B, 13, 3}));
    // Inputs were rounded to float: relative 1e-5 on energies, absolute on forces scaled by size.
    EXPECT_ALL_CLOSE(uf, u, 1e-3, 1e-4);
    EXPECT_TRUE(test::not_all_zero(ff));
}

}  // namespace
}  // namespace eqflow
