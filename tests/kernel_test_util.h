// Shared by the kernel-dynamics field's tests (tests/test_kernel_dynamics.cpp for the CPU
// backends, tests/test_kernel_field_gpu.cpp for CUDA): inputs spread like the data, float/double
// conversions, and the float32 backends' tolerance against the double reference.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "test_util.h"

namespace eqflow::test {

// A float32 kernel field against the double one, relative to the largest |value| of the output:
// each pair's radial sum of K <= 50 Gaussians and the n - 1 pair terms of v_i round at 2^-24 ~ 6e-8
// relative to the largest term, and exp in float adds a few ulps; outputs (v_i, the divergence,
// gradients) are sums of terms of both signs that cancel to well below their largest term, so
// the error is measured against the output's scale. Observed up to 4e-6 (LJ13 input gradients of
// the divergence); a field computed with a wrong formula is off by O(1).
constexpr double kKernelFloatRtol = 2e-5;

// Spread like the data and the prior: particles of a Gaussian cloud of width 1.5, at least 0.3
// apart (pair distances over the radial basis), at times spread over [0, 1].
struct KernelInputs {
    std::vector<double> x, t;
};
inline KernelInputs random_kernel_inputs(int B, int n, int d, uint64_t salt) {
    KernelInputs in;
    auto gen = rng(salt);
    in.x = random_configurations(B, n, d, 1.5, 0.3, gen);
    for (int b = 0; b < B; ++b) in.t.push_back((b + 0.37) / B);
    return in;
}

template <class T>
std::vector<T> cast(const std::vector<double>& v) {
    return std::vector<T>(v.begin(), v.end());
}
template <class T>
std::vector<double> widen(const std::vector<T>& v) {
    return std::vector<double>(v.begin(), v.end());
}
inline double max_abs(const std::vector<double>& v) {
    double m = 0.0;
    for (double x : v) m = std::max(m, std::fabs(x));
    return m;
}

// actual (a float field's output, widened) within kKernelFloatRtol of expected's scale.
inline void expect_float_close(const std::vector<double>& actual,
                               const std::vector<double>& expected, const char* what) {
    EXPECT_TRUE(not_all_zero(expected)) << what;
    EXPECT_TRUE(all_close(actual, expected, kKernelFloatRtol * max_abs(expected), kKernelFloatRtol))
        << what;
}

// An E(n) x permutation image of B rows x [n][d] and what an equivariant field must give there:
// a random orthogonal R (a reflection when asked), shift and particle permutation perm, then
// y_b[i] = R x_b[perm[i]] + shift and expected_b[i] = R v_b[perm[i]].
struct TransformedRows {
    std::vector<double> y, expected;
};
inline TransformedRows transform_rows(const std::vector<double>& x, const std::vector<double>& v,
                                      int B, int n, int d, bool reflection, std::mt19937_64& gen) {
    const int nd = n * d;
    const std::vector<double> R = random_orthogonal(d, reflection, gen);
    const std::vector<double> shift = random_normal(static_cast<size_t>(d), gen, 3.0);
    std::vector<int> perm(static_cast<size_t>(n));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), gen);
    const std::vector<double> rx = rotate(x, R, d), rv = rotate(v, R, d);
    TransformedRows out{std::vector<double>(x.size()), std::vector<double>(v.size())};
    for (int b = 0; b < B; ++b)
        for (int i = 0; i < n; ++i)
            for (int a = 0; a < d; ++a) {
                out.y[b * nd + i * d + a] = rx[b * nd + perm[i] * d + a] + shift[a];
                out.expected[b * nd + i * d + a] = rv[b * nd + perm[i] * d + a];
            }
    return out;
}

}  // namespace eqflow::test
