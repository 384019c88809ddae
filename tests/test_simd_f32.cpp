// The float32 SIMD building blocks of the fast CPU backend (src/cpu/simd_f32.h), compiled with
// that backend's flags (the build machine's vector width), against libm in double. The edge MLPs'
// sigmoids, tanh and exp must stay finite and within a few ulp over the whole float range: a
// NaN from exp's clamp (+inf) through the reciprocal's Newton step once reached the LJ55
// divergence, which only a long test caught.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "cpu/simd_f32.h"

namespace {

namespace simd = eqflow::cpu::simd;
using simd::kLanes;
using simd::vf;

constexpr float kInf = std::numeric_limits<float>::infinity();

// Inputs from lo to hi, kLanes at a time, through f; checks every lane with `check`.
template <class F, class C>
void sweep(float lo, float hi, int count, F f, C check) {
    for (int i = 0; i < count; i += kLanes) {
        vf x;
        for (int l = 0; l < kLanes; ++l)
            x[l] = lo + (hi - lo) * static_cast<float>(i + l) / static_cast<float>(count - 1);
        const vf y = f(x);
        for (int l = 0; l < kLanes; ++l) check(x[l], y[l]);
    }
}

double ulp_of(double v) {
    const float f = static_cast<float>(v);
    return std::nextafter(std::fabs(f), kInf) - std::fabs(f);
}

TEST(SimdF32, SplatFillsEveryLane) {
    const vf v = simd::splat(-1.5f);
    for (int l = 0; l < kLanes; ++l) EXPECT_EQ(v[l], -1.5f);
}

TEST(SimdF32, ExpIsAccurateAndFiniteEverywhere) {
    double worst = 0.0;
    sweep(-87.0f, 88.0f, 200000, simd::vexp, [&](float x, float y) {
        const double ref = std::exp(static_cast<double>(x));
        worst = std::max(worst, std::fabs(y - ref) / ulp_of(ref));
    });
    EXPECT_LE(worst, 3.0) << "ulp";
    for (float x : {88.3f, 88.7f, 89.0f, 1000.0f, kInf}) {
        const float y = simd::vexp(simd::splat(x))[0];
        EXPECT_TRUE(std::isfinite(y)) << "exp(" << x << ") = " << y;
        EXPECT_GT(y, 1e38f) << x;
    }
    for (float x : {-87.3f, -100.0f, -kInf}) {
        const float y = simd::vexp(simd::splat(x))[0];
        EXPECT_TRUE(std::isfinite(y) && y > 0.0f) << "exp(" << x << ") = " << y;
    }
}

TEST(SimdF32, ReciprocalIsWithinTwoUlp) {
    double worst = 0.0;
    sweep(1.0f, 1e6f, 200000, simd::vrecip, [&](float x, float y) {
        const double ref = 1.0 / static_cast<double>(x);
        worst = std::max(worst, std::fabs(y - ref) / ulp_of(ref));
    });
    EXPECT_LE(worst, 2.0) << "ulp";
    EXPECT_EQ(simd::vrecip(simd::splat(1.0f))[0], 1.0f);
    const float big = simd::vrecip(simd::splat(1e30f))[0];
    EXPECT_LE(std::fabs(big - 1e-30) / ulp_of(1e-30), 2.0) << big;
    for (float x : {3e38f, kInf}) {  // exp overflowing: the cap's 2^-126 or 0, never NaN
        const float y = simd::vrecip(simd::splat(x))[0];
        EXPECT_TRUE(y >= 0.0f && y <= std::numeric_limits<float>::min()) << "1/" << x << " = " << y;
    }
}

TEST(SimdF32, SigmoidAndTanhSaturateWithoutNaN) {
    double worst_s = 0.0, worst_t = 0.0;
    sweep(-120.0f, 120.0f, 240001, simd::vsigmoid, [&](float z, float s) {
        ASSERT_FALSE(std::isnan(s)) << z;
        worst_s = std::max(worst_s, std::fabs(s - 1.0 / (1.0 + std::exp(-static_cast<double>(z)))));
    });
    sweep(-60.0f, 60.0f, 120001, simd::vtanh, [&](float c, float t) {
        ASSERT_FALSE(std::isnan(t)) << c;
        worst_t = std::max(worst_t, std::fabs(t - std::tanh(static_cast<double>(c))));
    });
    // One ulp of 1 (2^-23) for sigmoid, two for tanh, in every build, contracting or not (the
    // ASan job's -O1): seen 8.8e-8 / 1.8e-7 with AVX-512 at -O1 and -O3, 1.1e-7 / 2.2e-7 with
    // AVX without FMA.
    EXPECT_LE(worst_s, 1.2e-7);
    EXPECT_LE(worst_t, 2.4e-7);
    EXPECT_EQ(simd::vsigmoid(simd::splat(0.0f))[0], 0.5f);
    EXPECT_EQ(simd::vsigmoid(simd::splat(30.0f))[0], 1.0f);
    EXPECT_EQ(simd::vtanh(simd::splat(0.0f))[0], 0.0f);
    EXPECT_EQ(simd::vsigmoid(simd::splat(kInf))[0], 1.0f);
    EXPECT_LT(simd::vsigmoid(simd::splat(-kInf))[0], 1.2e-38f);
    EXPECT_EQ(simd::vtanh(simd::splat(kInf))[0], 1.0f);
    EXPECT_EQ(simd::vtanh(simd::splat(-kInf))[0], -1.0f);
}

TEST(SimdF32, LaneSumsOfOneAndTwoVectors) {
    vf a, b;
    double sa = 0.0, sb = 0.0;
    for (int l = 0; l < kLanes; ++l) {  // integers: every order of summation is exact
        a[l] = static_cast<float>(l + 1);
        b[l] = static_cast<float>(-3 * l + 7);
        sa += a[l];
        sb += b[l];
    }
    EXPECT_EQ(simd::hsum(a), sa);
    float ha = 0.0f, hb = 0.0f;
    simd::hsum2(a, b, ha, hb);
    EXPECT_EQ(ha, sa);
    EXPECT_EQ(hb, sb);
}

}  // namespace
