// The unfused EGNN forward baseline of the benchmarks (bench/egnn_unfused.cu) against the CPU
// reference egnn_forward (double), label gpu: the baseline must compute the real field for its
// timings to mean anything.
#include <gtest/gtest.h>

#include <cmath>

#include "egnn_test_util.h"
#include "egnn_unfused.h"
#include "eqflow/egnn.h"
#include "test_util.h"

namespace eqflow {
namespace {

using Case = test::EgnnCase;

// The benchmark's DW4 and LJ13 sizes, a plain variant (no attention, no tanh, H not a multiple
// of 32), and LJ55's H = 64, L = 7 at a smaller n.
const Case kCases[] = {
    {"dw4", 4, 2, 32, 3, true, true},
    {"lj13", 13, 3, 32, 3, true, true},
    {"n7_h48_plain", 7, 3, 48, 2, false, false},
    {"n9_h64_l7", 9, 3, 64, 7, true, true},
};

// As test_egnn_gpu's kFieldTol: float32 against double through L layers, relative to the
// field's scale; any wrong term is O(1).
constexpr double kFieldTol = 2e-4;

class EgnnUnfused_ : public ::testing::TestWithParam<Case> {};

TEST_P(EgnnUnfused_, ForwardMatchesCpuReference) {
    const Case c = GetParam();
    const EgnnModel m = test::random_egnn_model(c, 17);
    const int B = 5;
    const test::EgnnInputs in = test::random_egnn_inputs(c, B, 51);
    std::vector<double> v_ref(in.x.size());
    egnn_forward(m.config, m.params.data(), B, in.x.data(), in.t.data(), v_ref.data());

    bench::EgnnUnfused net(m, 8);  // capacity above the batch: only B rows are used
    net.set_input(in.xf.data(), in.tf.data(), B);
    net.forward(B);
    const std::vector<float> v = net.output(B);
    double scale = 0;
    for (double y : v_ref) scale = std::max(scale, std::fabs(y));
    ASSERT_GT(scale, 1e-3);
    EXPECT_ALL_CLOSE(v, v_ref, kFieldTol * (1 + scale), kFieldTol) << c.name;
    EXPECT_GT(net.device_bytes(), static_cast<size_t>(2 * 8 * c.n * (c.n - 1) * c.hidden * 4));
}

INSTANTIATE_TEST_SUITE_P(Configs, EgnnUnfused_, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case>& info) {
                             return std::string(info.param.name);
                         });

}  // namespace
}  // namespace eqflow
