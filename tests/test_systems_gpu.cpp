// Target systems: the CUDA kernels against the CPU reference on random batches (label gpu).
#include <gtest/gtest.h>

#include <cmath>

#include "eqflow/systems.h"
#include "eqflow/tensor.h"
#include "test_util.h"

namespace eqflow {
namespace {

// Random batch around the system's scale; LJ particles kept apart so energies stay moderate.
std::vector<double> random_batch(const System& s, int B, std::mt19937_64& gen) {
    std::vector<double> out;
    for (int b = 0; b < B; ++b) {
        const std::vector<double> x =
            s.kind == PotentialKind::double_well
                ? test::random_configuration(s.n, s.d, 2.0, 0.5, gen)
                : test::random_configuration(s.n, s.d, 0.5 * std::cbrt(static_cast<double>(s.n)),
                                             0.85, gen);
        out.insert(out.end(), x.begin(), x.end());
    }
    return out;
}

class SystemsGpu : public ::testing::TestWithParam<const char*> {};

TEST_P(SystemsGpu, DoubleMatchesCpu) {
    const System s = make_system(GetParam());
    auto gen = test::rng(21);
    for (int B : {1, 7, 257}) {
        const std::vector<double> x = random_batch(s, B, gen);
        Tensor<double> xc = Tensor<double>::from_host(x, Shape{B, s.n, s.d});
        Tensor<double> uc(Shape{B}), fc(Shape{B, s.n, s.d});
        energy_forces(s, xc.cview(), uc.view(), fc.view());
        Tensor<double> xg = xc.to(Device::cuda);
        Tensor<double> ug(Shape{B}, Device::cuda), fg(Shape{B, s.n, s.d}, Device::cuda);
        energy_forces(s, xg.cview(), ug.view(), fg.view());
        // Double on both sides; only summation order differs: 1e-10 relative.
        EXPECT_ALL_CLOSE(ug.to_vector(), uc.to_vector(), 1e-9, 1e-10) << s.name << " B=" << B;
        EXPECT_ALL_CLOSE(fg.to_vector(), fc.to_vector(), 1e-8, 1e-10) << s.name << " B=" << B;
        EXPECT_TRUE(test::not_all_zero(fg.to_vector()));
    }
}

TEST_P(SystemsGpu, FloatMatchesCpu) {
    const System s = make_system(GetParam());
    auto gen = test::rng(22);
    const int B = 300;
    const std::vector<double> x = random_batch(s, B, gen);
    const std::vector<float> xf(x.begin(), x.end());
    const std::vector<double> xr(xf.begin(), xf.end());  // the CPU sees the same rounded inputs
    Tensor<double> xc = Tensor<double>::from_host(xr, Shape{B, s.n, s.d});
    Tensor<double> uc(Shape{B}), fc(Shape{B, s.n, s.d});
    energy_forces(s, xc.cview(), uc.view(), fc.view());
    Tensor<float> xg = Tensor<float>::from_host(xf, Shape{B, s.n, s.d}, Device::cuda);
    Tensor<float> ug(Shape{B}, Device::cuda), fg(Shape{B, s.n, s.d}, Device::cuda);
    energy_forces(s, xg.cview(), ug.view(), fg.view());
    // float32 pair terms: ~1e-7 relative each, summed over up to n^2 = 3025 terms of mixed sign;
    // LJ terms at r ~ 0.85 reach ~1e1, so 1e-4 relative + 1e-3 absolute covers accumulation.
    EXPECT_ALL_CLOSE(ug.to_vector(), uc.to_vector(), 1e-3, 1e-4) << s.name;
    EXPECT_ALL_CLOSE(fg.to_vector(), fc.to_vector(), 1e-2, 1e-3) << s.name;
}

TEST(SystemsGpuEdge, EmptyBatch) {
    const System s = make_system("lj13");
    Tensor<double> x(Shape{0, 13, 3}, Device::cuda), u(Shape{0}, Device::cuda);
    EXPECT_NO_THROW(energy_forces(s, x.cview(), u.view(), {}));
}

INSTANTIATE_TEST_SUITE_P(All, SystemsGpu,
                         ::testing::Values("dw4", "lj13", "lj55", "lj:2", "lj:130"));

}  // namespace
}  // namespace eqflow
