// Kabsch alignment: the CUDA kernel against the CPU reference (label gpu).
#include <gtest/gtest.h>

#include <vector>

#include "eqflow/kabsch.h"
#include "eqflow/tensor.h"
#include "test_util.h"

namespace eqflow {
namespace {

class KabschGpu : public ::testing::TestWithParam<int> {};

TEST_P(KabschGpu, MatchesCpu) {
    // The same double math on both sides; only FMA contraction and the order of the warp's
    // sums differ (~1e-15 relative), amplified by at most the conditioning of the eigenproblem.
    constexpr double kRotTol = 1e-9;
    constexpr double kCostRtol = 1e-10;
    const int d = GetParam();
    auto gen = test::rng(800 + d);
    for (int n : {1, 4, 13, 55, 100}) {
        const int B = 257;
        const std::vector<double> x = test::random_normal(B * n * d, gen),
                                  y = test::random_normal(B * n * d, gen);
        for (bool reflect : {false, true}) {
            Tensor<double> xc = Tensor<double>::from_host(x, Shape{B, n, d}),
                           yc = Tensor<double>::from_host(y, Shape{B, n, d});
            Tensor<double> rc(Shape{B, d, d}), cc(Shape{B}), ac(Shape{B, n, d});
            kabsch(xc.cview(), yc.cview(), rc.view(), cc.view(), ac.view(), reflect);
            Tensor<double> xg = xc.to(Device::cuda), yg = yc.to(Device::cuda);
            Tensor<double> rg(Shape{B, d, d}, Device::cuda), cg(Shape{B}, Device::cuda),
                ag(Shape{B, n, d}, Device::cuda);
            kabsch(xg.cview(), yg.cview(), rg.view(), cg.view(), ag.view(), reflect);
            // One particle leaves the rotation about its axis free (a degenerate eigenproblem):
            // compare the rotation only where it is unique; the aligned result always is.
            if (n > 1) EXPECT_ALL_CLOSE(rg.to_vector(), rc.to_vector(), kRotTol, 0.0) << "n=" << n;
            EXPECT_ALL_CLOSE(cg.to_vector(), cc.to_vector(), 1e-12, kCostRtol) << "n=" << n;
            EXPECT_ALL_CLOSE(ag.to_vector(), ac.to_vector(), kRotTol, kRotTol) << "n=" << n;
            EXPECT_TRUE(test::not_all_zero(rg.to_vector()));
        }
    }
}

TEST_P(KabschGpu, FloatMatchesCpu) {
    constexpr double kFloatTol = 1e-5;  // outputs rounded to float
    const int d = GetParam(), n = 22, B = 100;
    auto gen = test::rng(810 + d);
    const std::vector<double> x = test::random_normal(B * n * d, gen),
                              y = test::random_normal(B * n * d, gen);
    const std::vector<float> xf(x.begin(), x.end()), yf(y.begin(), y.end());
    Tensor<float> xc = Tensor<float>::from_host(xf, Shape{B, n, d}),
                  yc = Tensor<float>::from_host(yf, Shape{B, n, d});
    Tensor<float> rc(Shape{B, d, d}), cc(Shape{B});
    kabsch(xc.cview(), yc.cview(), rc.view(), cc.view());
    Tensor<float> xg = xc.to(Device::cuda), yg = yc.to(Device::cuda);
    Tensor<float> rg(Shape{B, d, d}, Device::cuda), cg(Shape{B}, Device::cuda);
    kabsch(xg.cview(), yg.cview(), rg.view(), cg.view());
    EXPECT_ALL_CLOSE(rg.to_vector(), rc.to_vector(), kFloatTol, 0.0);
    EXPECT_ALL_CLOSE(cg.to_vector(), cc.to_vector(), 0.0, kFloatTol);
}

INSTANTIATE_TEST_SUITE_P(Dims, KabschGpu, ::testing::Values(2, 3));

}  // namespace
}  // namespace eqflow
