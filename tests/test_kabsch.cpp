// Kabsch alignment, CPU reference: known rotations, properness, optimality, degenerate inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "common/kabsch_math.h"
#include "eqflow/error.h"
#include "eqflow/kabsch.h"
#include "eqflow/tensor.h"
#include "test_util.h"

namespace eqflow {
namespace {

// Orthogonality and exact recovery: double arithmetic on O(1) numbers, a few hundred operations.
constexpr double kOrthoTol = 1e-12;
constexpr double kExactTol = 1e-10;

// A uniformly random rotation (d = 3 via a random unit quaternion, d = 2 via an angle).
std::vector<double> random_rotation(int d, std::mt19937_64& gen) {
    std::normal_distribution<double> g(0.0, 1.0);
    if (d == 2) {
        const double t = std::atan2(g(gen), g(gen));
        return {std::cos(t), -std::sin(t), std::sin(t), std::cos(t)};
    }
    double q[4], norm = 0;
    for (double& v : q) {
        v = g(gen);
        norm += v * v;
    }
    norm = std::sqrt(norm);
    for (double& v : q) v /= norm;
    const double w = q[0], x = q[1], y = q[2], z = q[3];
    return {1 - 2 * (y * y + z * z), 2 * (x * y - w * z),     2 * (x * z + w * y),
            2 * (x * y + w * z),     1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y),     2 * (y * z + w * x),     1 - 2 * (x * x + y * y)};
}

std::vector<double> apply(const std::vector<double>& r, const std::vector<double>& x, int n,
                          int d) {
    std::vector<double> out(n * d, 0.0);
    for (int i = 0; i < n; ++i)
        for (int a = 0; a < d; ++a)
            for (int c = 0; c < d; ++c) out[i * d + a] += r[a * d + c] * x[i * d + c];
    return out;
}

double sq_dist(const std::vector<double>& a, const std::vector<double>& b) {
    double s = 0;
    for (size_t k = 0; k < a.size(); ++k) s += (a[k] - b[k]) * (a[k] - b[k]);
    return s;
}

double det(const double* r, int d) {
    if (d == 2) return r[0] * r[3] - r[1] * r[2];
    return r[0] * (r[4] * r[8] - r[5] * r[7]) - r[1] * (r[3] * r[8] - r[5] * r[6]) +
           r[2] * (r[3] * r[7] - r[4] * r[6]);
}

void expect_orthogonal(const double* r, int d, double expected_det) {
    for (int a = 0; a < d; ++a)
        for (int b = 0; b < d; ++b) {
            double s = 0;
            for (int k = 0; k < d; ++k) s += r[k * d + a] * r[k * d + b];
            EXPECT_NEAR(s, a == b ? 1.0 : 0.0, kOrthoTol);
        }
    EXPECT_NEAR(det(r, d), expected_det, kOrthoTol);
}

struct Aligned {
    std::vector<double> r, cost, aligned;
};

Aligned align(const std::vector<double>& x, const std::vector<double>& y, int B, int n, int d,
              bool reflect = false) {
    Aligned a{std::vector<double>(B * d * d), std::vector<double>(B),
              std::vector<double>(B * n * d)};
    kabsch(TensorView<const double>(x.data(), Shape{B, n, d}),
           TensorView<const double>(y.data(), Shape{B, n, d}),
           TensorView<double>(a.r.data(), Shape{B, d, d}),
           TensorView<double>(a.cost.data(), Shape{B}),
           TensorView<double>(a.aligned.data(), Shape{B, n, d}), reflect);
    return a;
}

class Kabsch : public ::testing::TestWithParam<int> {};

TEST_P(Kabsch, RecoversKnownRotation) {
    const int d = GetParam(), n = 13, B = 20;
    auto gen = test::rng(500 + d);
    std::vector<double> x, y, q;
    for (int b = 0; b < B; ++b) {
        const std::vector<double> xb = test::random_normal(n * d, gen),
                                  rot = random_rotation(d, gen);
        const std::vector<double> yb = apply(rot, xb, n, d);
        x.insert(x.end(), xb.begin(), xb.end());
        y.insert(y.end(), yb.begin(), yb.end());
        q.insert(q.end(), rot.begin(), rot.end());
    }
    const Aligned a = align(x, y, B, n, d);
    EXPECT_ALL_CLOSE(a.r, q, kExactTol, 0.0);
    EXPECT_ALL_CLOSE(a.aligned, y, kExactTol, 0.0);
    for (int b = 0; b < B; ++b) {
        EXPECT_LT(a.cost[b], 1e-20);
        expect_orthogonal(a.r.data() + b * d * d, d, 1.0);
    }
}

TEST_P(Kabsch, RecoversRotationUnderNoise) {
    // Noise of 0.01 on unit-scale points: the estimate moves by ~0.01 / sqrt(n); 0.02 per entry
    // is several standard deviations. The optimum is never worse than the true rotation.
    constexpr double kNoisyTol = 0.02;
    const int d = GetParam(), n = 55, B = 10;
    auto gen = test::rng(510 + d);
    for (int b = 0; b < B; ++b) {
        const std::vector<double> x = test::random_normal(n * d, gen),
                                  rot = random_rotation(d, gen);
        std::vector<double> y = apply(rot, x, n, d);
        const std::vector<double> noise = test::random_normal(n * d, gen, 0.01);
        for (int k = 0; k < n * d; ++k) y[k] += noise[k];
        const Aligned a = align(x, y, 1, n, d);
        EXPECT_ALL_CLOSE(a.r, rot, kNoisyTol, 0.0);
        EXPECT_LE(a.cost[0], sq_dist(apply(rot, x, n, d), y));
        expect_orthogonal(a.r.data(), d, 1.0);
    }
}

TEST_P(Kabsch, OptimalAgainstPerturbedAndRandomRotations) {
    // The returned cost must not exceed the cost of any other rotation: nearby ones (local
    // optimality) and random ones (global). Slack: rounding of sums of ~40 O(1) squares.
    constexpr double kCostSlack = 1e-12;
    const int d = GetParam(), n = 13;
    auto gen = test::rng(520 + d);
    for (int trial = 0; trial < 20; ++trial) {
        const std::vector<double> x = test::random_normal(n * d, gen),
                                  y = test::random_normal(n * d, gen);
        const Aligned a = align(x, y, 1, n, d);
        EXPECT_NEAR(a.cost[0], sq_dist(a.aligned, y), 1e-12 * (1 + a.cost[0]));
        expect_orthogonal(a.r.data(), d, 1.0);
        for (int k = 0; k < 200; ++k) {
            const std::vector<double> q = random_rotation(d, gen);
            EXPECT_LE(a.cost[0], sq_dist(apply(q, x, n, d), y) + kCostSlack);
        }
        // Proper small perturbations: R * rot(eps) about each coordinate plane.
        for (int p = 0; p < d; ++p)
            for (int qd = p + 1; qd < d; ++qd)
                for (double eps : {1e-4, -1e-4, 1e-2, -1e-2}) {
                    std::vector<double> g(d * d, 0.0);
                    for (int e = 0; e < d; ++e) g[e * d + e] = 1.0;
                    g[p * d + p] = g[qd * d + qd] = std::cos(eps);
                    g[p * d + qd] = -std::sin(eps);
                    g[qd * d + p] = std::sin(eps);
                    std::vector<double> rg(d * d, 0.0);
                    for (int i = 0; i < d; ++i)
                        for (int j = 0; j < d; ++j)
                            for (int k = 0; k < d; ++k)
                                rg[i * d + j] += a.r[i * d + k] * g[k * d + j];
                    EXPECT_LE(a.cost[0], sq_dist(apply(rg, x, n, d), y) + kCostSlack);
                }
    }
}

TEST_P(Kabsch, ReflectionsOnlyWhenAsked) {
    const int d = GetParam(), n = 9;
    auto gen = test::rng(530 + d);
    const std::vector<double> x = test::random_normal(n * d, gen);
    // y = mirror image of a rotated x: only an improper matrix aligns it exactly.
    std::vector<double> y = apply(random_rotation(d, gen), x, n, d);
    for (int i = 0; i < n; ++i) y[i * d] = -y[i * d];
    const Aligned proper = align(x, y, 1, n, d, false);
    expect_orthogonal(proper.r.data(), d, 1.0);
    EXPECT_GT(proper.cost[0], 1e-3);
    const Aligned improper = align(x, y, 1, n, d, true);
    expect_orthogonal(improper.r.data(), d, -1.0);
    EXPECT_LT(improper.cost[0], 1e-20);
    // When a rotation is optimal, allowing reflections still returns it.
    const std::vector<double> z = apply(random_rotation(d, gen), x, n, d);
    const Aligned rot = align(x, z, 1, n, d, true);
    expect_orthogonal(rot.r.data(), d, 1.0);
    EXPECT_LT(rot.cost[0], 1e-20);
}

TEST_P(Kabsch, DegenerateInputsGiveProperRotations) {
    const int d = GetParam();
    auto gen = test::rng(540 + d);
    std::vector<std::vector<double>> xs, ys;
    const int n = 6;
    // Collinear mobile and target, coincident particles (all at the origin), one at the origin
    // and one not, and a planar pair in 3D.
    std::vector<double> line(n * d, 0.0), line2(n * d, 0.0), zeros(n * d, 0.0), planar(n * d, 0.0);
    for (int i = 0; i < n; ++i) {
        line[i * d] = i - 2.5;
        line2[i * d + 1] = 0.7 * (i - 2.5);
        planar[i * d] = std::cos(i);
        planar[i * d + 1] = std::sin(i);
    }
    const std::vector<double> rnd = test::random_normal(n * d, gen);
    const std::vector<std::pair<std::vector<double>, std::vector<double>>> cases = {
        {line, line2}, {line, line},   {zeros, zeros},  {zeros, rnd},
        {rnd, zeros},  {planar, line}, {planar, planar}};
    for (const auto& c : cases) {
        for (bool reflect : {false, true}) {
            const Aligned a = align(c.first, c.second, 1, n, d, reflect);
            EXPECT_TRUE(std::isfinite(a.cost[0]));
            const double dt = det(a.r.data(), d);
            expect_orthogonal(a.r.data(), d, reflect ? (dt < 0 ? -1.0 : 1.0) : 1.0);
            EXPECT_LE(a.cost[0], sq_dist(c.first, c.second) + 1e-12);  // never worse than identity
        }
    }
    // Collinear onto a rotated copy of itself: exact alignment.
    const Aligned a = align(line, apply(random_rotation(d, gen), line, n, d), 1, n, d);
    EXPECT_LT(a.cost[0], 1e-20);
}

TEST_P(Kabsch, FloatMatchesDouble) {
    // Float inputs are widened and the math runs in double; outputs rounded to float.
    constexpr double kFloatTol = 1e-5;
    const int d = GetParam(), n = 13, B = 8;
    auto gen = test::rng(550 + d);
    const std::vector<double> x = test::random_normal(B * n * d, gen),
                              y = test::random_normal(B * n * d, gen);
    const std::vector<float> xf(x.begin(), x.end()), yf(y.begin(), y.end());
    const std::vector<double> xr(xf.begin(), xf.end()), yr(yf.begin(), yf.end());
    const Aligned a = align(xr, yr, B, n, d);
    std::vector<float> r(B * d * d), cost(B);
    kabsch(TensorView<const float>(xf.data(), Shape{B, n, d}),
           TensorView<const float>(yf.data(), Shape{B, n, d}),
           TensorView<float>(r.data(), Shape{B, d, d}), TensorView<float>(cost.data(), Shape{B}));
    EXPECT_ALL_CLOSE(r, a.r, kFloatTol, 0.0);
    EXPECT_ALL_CLOSE(cost, a.cost, 0.0, kFloatTol);
}

INSTANTIATE_TEST_SUITE_P(Dims, Kabsch, ::testing::Values(2, 3));

// Horn's rotation the way it was always computed: cyclic Jacobi on the 4 x 4 matrix.
void jacobi_rotation_3d(const double* h, double* r) {
    double n[16] = {h[0] + h[4] + h[8],  h[7] - h[5], h[2] - h[6], h[3] - h[1], h[7] - h[5],
                    h[0] - h[4] - h[8],  h[3] + h[1], h[2] + h[6], h[2] - h[6], h[3] + h[1],
                    -h[0] + h[4] - h[8], h[7] + h[5], h[3] - h[1], h[2] + h[6], h[7] + h[5],
                    -h[0] - h[4] + h[8]};
    double v[16];
    kabsch_math::jacobi_eigen<4>(n, v);
    int best = 0;
    for (int k = 1; k < 4; ++k)
        if (n[k * 4 + k] > n[best * 4 + best]) best = k;
    double q[4], norm = 0.0;
    for (int i = 0; i < 4; ++i) norm += v[i * 4 + best] * v[i * 4 + best];
    for (int i = 0; i < 4; ++i) q[i] = v[i * 4 + best] / std::sqrt(norm);
    r[0] = q[0] * q[0] + q[1] * q[1] - q[2] * q[2] - q[3] * q[3];
    r[1] = 2 * (q[1] * q[2] - q[0] * q[3]);
    r[2] = 2 * (q[1] * q[3] + q[0] * q[2]);
    r[3] = 2 * (q[1] * q[2] + q[0] * q[3]);
    r[4] = q[0] * q[0] - q[1] * q[1] + q[2] * q[2] - q[3] * q[3];
    r[5] = 2 * (q[2] * q[3] - q[0] * q[1]);
    r[6] = 2 * (q[1] * q[3] - q[0] * q[2]);
    r[7] = 2 * (q[2] * q[3] + q[0] * q[1]);
    r[8] = q[0] * q[0] - q[1] * q[1] - q[2] * q[2] + q[3] * q[3];
}

TEST(KabschMath, FastHornPathAgreesWithJacobi) {
    // best_rotation_3d finds Horn's top eigenvector by Newton on the characteristic quartic and
    // the adjugate, and hands near-degenerate top eigenvalues to Jacobi. On H from random point
    // sets (det H of either sign) the fast path must run and agree with Jacobi: both are accurate
    // to ~eps / (relative eigen-gap), and the fast path is only taken for gaps above ~1e-3.
    constexpr double kAgreeTol = 1e-11;
    constexpr double kScoreRtol = 1e-14;
    auto gen = test::rng(560);
    std::normal_distribution<double> g(0.0, 1.0);
    int fast = 0;
    for (int trial = 0; trial < 2000; ++trial) {
        const int n = 3 + trial % 11;
        double h[9] = {0};
        std::vector<double> x(n * 3), y(n * 3);
        for (double& v : x) v = g(gen);
        for (double& v : y) v = g(gen);
        for (int i = 0; i < n; ++i)
            for (int a = 0; a < 3; ++a)
                for (int b = 0; b < 3; ++b) h[a * 3 + b] += y[i * 3 + a] * x[i * 3 + b];
        double r[9], rj[9], q[4];
        const double score = kabsch_math::best_rotation_3d(h, r);
        jacobi_rotation_3d(h, rj);
        double hh = 0, score_j = 0;
        for (int k = 0; k < 9; ++k) {
            hh += h[k] * h[k];
            score_j += rj[k] * h[k];
        }
        double nm[16] = {h[0] + h[4] + h[8],  h[7] - h[5], h[2] - h[6], h[3] - h[1], h[7] - h[5],
                         h[0] - h[4] - h[8],  h[3] + h[1], h[2] + h[6], h[2] - h[6], h[3] + h[1],
                         -h[0] + h[4] - h[8], h[7] + h[5], h[3] - h[1], h[2] + h[6], h[7] + h[5],
                         -h[0] - h[4] + h[8]};
        fast += kabsch_math::horn_top_eigenvector_fast(nm, hh, det(h, 3), q);
        expect_orthogonal(r, 3, 1.0);
        EXPECT_GE(score, score_j - kScoreRtol * std::fabs(score_j)) << "trial " << trial;
        for (int k = 0; k < 9; ++k) EXPECT_NEAR(r[k], rj[k], kAgreeTol) << "trial " << trial;
    }
    EXPECT_GT(fast, 1900);  // the fast path is the rule, Jacobi the exception
    // Degenerate top eigenvalues go to Jacobi: H = 0, rank one (collinear inputs), and
    // det H < 0 with sigma2 = sigma3 (two equally good rotations).
    const double zero[9] = {0}, rank1[9] = {2, 4, 6, 1, 2, 3, -1, -2, -3},
                 tie[9] = {3, 0, 0, 0, 1, 0, 0, 0, -1};
    for (const double* h : {zero, rank1, tie}) {
        double hh = 0, q[4];
        for (int k = 0; k < 9; ++k) hh += h[k] * h[k];
        double nm[16] = {h[0] + h[4] + h[8],  h[7] - h[5], h[2] - h[6], h[3] - h[1], h[7] - h[5],
                         h[0] - h[4] - h[8],  h[3] + h[1], h[2] + h[6], h[2] - h[6], h[3] + h[1],
                         -h[0] + h[4] - h[8], h[7] + h[5], h[3] - h[1], h[2] + h[6], h[7] + h[5],
                         -h[0] - h[4] + h[8]};
        EXPECT_FALSE(kabsch_math::horn_top_eigenvector_fast(nm, hh, det(h, 3), q));
        double r[9];
        kabsch_math::best_rotation_3d(h, r);
        expect_orthogonal(r, 3, 1.0);
    }
}

TEST(KabschArgs, ShapesAndEmpty) {
    std::vector<double> x(2 * 4 * 3), r(2 * 9);
    EXPECT_THROW(kabsch(TensorView<const double>(x.data(), Shape{2, 6, 2}),
                        TensorView<const double>(x.data(), Shape{2, 6, 2}),
                        TensorView<double>(r.data(), Shape{2, 3, 3})),
                 Error);
    EXPECT_THROW(kabsch(TensorView<const double>(x.data(), Shape{2, 6, 2}),
                        TensorView<const double>(x.data(), Shape{2, 4, 3}), TensorView<double>()),
                 Error);
    std::vector<double> x4(2 * 6 * 4);
    EXPECT_THROW(kabsch(TensorView<const double>(x4.data(), Shape{2, 6, 4}),
                        TensorView<const double>(x4.data(), Shape{2, 6, 4}), TensorView<double>()),
                 Error);
    EXPECT_NO_THROW(kabsch(TensorView<const double>(nullptr, Shape{0, 5, 3}),
                           TensorView<const double>(nullptr, Shape{0, 5, 3}),
                           TensorView<double>(nullptr, Shape{0, 3, 3})));
}

}  // namespace
}  // namespace eqflow
