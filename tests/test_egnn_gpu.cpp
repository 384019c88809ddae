// The fused GPU EGNN (float32) against the CPU reference (double), label gpu.
#include <gtest/gtest.h>

#include <cmath>

#include "egnn_test_util.h"
#include "eqflow/egnn.h"
#include "eqflow/flow.h"
#include "eqflow/tensor.h"
#include "eqflow/trainer.h"
#include "test_util.h"

namespace eqflow {
namespace {

using Case = test::EgnnCase;

// n not a multiple of the 8 warps or of the 8 tangent directions; H not a multiple of 32.
const Case kCases[] = {
    {"dw4", 4, 2, 32, 3, true, true, false},
    {"lj13", 13, 3, 32, 3, true, true, false},
    {"n7_h48_plain", 7, 3, 48, 2, false, false, false},
    {"n10_typed", 10, 3, 32, 2, true, true, true},
    {"lj55", 55, 3, 64, 7, true, true, false},
};

// float32 against double through L layers of H-wide MLPs: ~1e-6 relative per op, amplified
// by the depth; 2e-4 relative to the field's scale (plus 2e-4 absolute) keeps a margin of ~10
// over what float accumulation gives and still catches any wrong term (those are O(1)).
constexpr double kFieldTol = 2e-4;
constexpr double kDivTol = 1e-3;  // the divergence sums n*d tangent entries

class EgnnGpu_ : public ::testing::TestWithParam<Case> {
  protected:
    const Case c = GetParam();
};

TEST_P(EgnnGpu_, ForwardAndDivergenceMatchCpu) {
    const EgnnModel model = test::random_egnn_model(c, 7);
    // The double-precision CPU divergence of LJ55 takes tens of seconds a sample: one is enough.
    const int B = c.n > 20 ? 1 : 5;
    const test::EgnnInputs in = test::random_egnn_inputs(c, B, 31);
    std::vector<double> v_ref(in.x.size()), div_ref(B);
    egnn_divergence(model.config, model.params.data(), B, in.x.data(), in.t.data(), v_ref.data(),
                    div_ref.data());

    Tensor<float> xd = Tensor<float>::from_host(in.xf, Shape{B, c.n, c.d}, Device::cuda);
    Tensor<float> td = Tensor<float>::from_host(in.tf, Shape{B}, Device::cuda);
    Tensor<float> vd(Shape{B, c.n, c.d}, Device::cuda), v2(Shape{B, c.n, c.d}, Device::cuda);
    Tensor<float> divd(Shape{B}, Device::cuda);
    test::GpuField gpu(model);
    gpu.forward(xd.cview(), td.cview(), vd.view());
    gpu.divergence(xd.cview(), td.cview(), v2.view(), divd.view());

    double vscale = 0, dscale = 0;
    for (double y : v_ref) vscale = std::max(vscale, std::fabs(y));
    for (double y : div_ref) dscale = std::max(dscale, std::fabs(y));
    ASSERT_GT(vscale, 1e-3) << "the field is too small for the comparison to mean anything";
    EXPECT_ALL_CLOSE(vd.to_vector(), v_ref, kFieldTol * (1 + vscale), kFieldTol) << c.name;
    EXPECT_ALL_CLOSE(v2.to_vector(), v_ref, kFieldTol * (1 + vscale), kFieldTol) << c.name;
    EXPECT_ALL_CLOSE(divd.to_vector(), div_ref, kDivTol * (1 + dscale), kDivTol) << c.name;
    EXPECT_TRUE(test::not_all_zero(divd.to_vector()));
}

TEST_P(EgnnGpu_, DeterministicAcrossRuns) {
    const EgnnModel model = test::random_egnn_model(c, 8);
    auto gen = test::rng(32);
    const int B = 3;
    const std::vector<double> x = test::random_configurations(B, c.n, c.d, 1.0, 0.3, gen);
    Tensor<float> xd = Tensor<float>::from_host(std::vector<float>(x.begin(), x.end()),
                                                Shape{B, c.n, c.d}, Device::cuda);
    Tensor<float> td = Tensor<float>::from_host({0.1f, 0.5f, 0.9f}, Shape{B}, Device::cuda);
    Tensor<float> d1(Shape{B}, Device::cuda), d2(Shape{B}, Device::cuda);
    test::GpuField gpu(model);
    gpu.divergence(xd.cview(), td.cview(), {}, d1.view());
    gpu.divergence(xd.cview(), td.cview(), {}, d2.view());
    EXPECT_EQ(d1.to_vector(), d2.to_vector());
}

// Gradients: float32 through backprop of L layers; relative to the largest gradient entry.
constexpr double kGradTol = 1e-3;

TEST_P(EgnnGpu_, BackwardMatchesCpuAndIsDeterministic) {
    const EgnnModel model = test::random_egnn_model(c, 9);
    auto gen = test::rng(33);
    const int B = 4;
    const std::vector<double> x = test::random_configurations(B, c.n, c.d, 1.0, 0.3, gen);
    std::vector<double> t;
    for (int b = 0; b < B; ++b) t.push_back(0.2 + 0.2 * b);
    const std::vector<double> g = test::random_normal(x.size(), gen);
    const int64_t P = egnn_parameter_count(model.config);
    std::vector<double> gp_ref(static_cast<size_t>(P), 0.0), gx_ref(x.size());
    egnn_backward(model.config, model.params.data(), B, x.data(), t.data(), g.data(), gp_ref.data(),
                  gx_ref.data());

    Tensor<float> xd = Tensor<float>::from_host(std::vector<float>(x.begin(), x.end()),
                                                Shape{B, c.n, c.d}, Device::cuda);
    Tensor<float> td =
        Tensor<float>::from_host(std::vector<float>(t.begin(), t.end()), Shape{B}, Device::cuda);
    Tensor<float> gd = Tensor<float>::from_host(std::vector<float>(g.begin(), g.end()),
                                                Shape{B, c.n, c.d}, Device::cuda);
    // dL_dparams accumulates: start from ones and subtract them afterwards.
    Tensor<float> gpd = Tensor<float>::from_host(std::vector<float>(static_cast<size_t>(P), 1.0f),
                                                 Shape{P}, Device::cuda);
    Tensor<float> gxd(Shape{B, c.n, c.d}, Device::cuda);
    test::GpuField gpu(model);
    gpu.backward(xd.cview(), td.cview(), gd.cview(), gpd.view(), gxd.view());
    std::vector<float> gp = gpd.to_vector();
    for (auto& v : gp) v -= 1.0f;
    double pscale = 0, xscale = 0;
    for (double v : gp_ref) pscale = std::max(pscale, std::fabs(v));
    for (double v : gx_ref) xscale = std::max(xscale, std::fabs(v));
    EXPECT_ALL_CLOSE(gp, gp_ref, kGradTol * pscale, kGradTol) << c.name;
    EXPECT_ALL_CLOSE(gxd.to_vector(), gx_ref, kGradTol * xscale, kGradTol) << c.name;

    Tensor<float> gp2 = Tensor<float>::from_host(std::vector<float>(static_cast<size_t>(P), 1.0f),
                                                 Shape{P}, Device::cuda);
    gpu.backward(xd.cview(), td.cview(), gd.cview(), gp2.view(), {});
    EXPECT_EQ(gp2.to_vector(), gpd.to_vector()) << "two runs gave different gradients";
}

// Exact-likelihood sampling with the GPU field against the CPU field: same prior points, so the
// samples and log q agree to float32 accuracy of the field times the solver's sensitivity.
TEST(EgnnGpuFlow, SamplingMatchesCpuField) {
    const Case c{"lj13", 13, 3, 32, 3, true, true, false};
    const EgnnModel model = test::random_egnn_model(c, 10);
    FlowOptions opt;
    opt.ode.method = OdeMethod::rk4;  // fixed steps: both fields take the same path
    opt.ode.steps = 10;
    opt.batch = 16;
    const FlowSamples cpu = flow_sample(egnn_flow_field(model, opt), c.n, c.d, 16, 5, opt);
    const FlowSamples gpu =
        flow_sample(field_ode<float>(make_cuda_field(model)), c.n, c.d, 16, 5, opt);
    EXPECT_EQ(cpu.x0, gpu.x0);
    EXPECT_ALL_CLOSE(gpu.x, cpu.x, 1e-3, 1e-3);
    EXPECT_ALL_CLOSE(gpu.log_q, cpu.log_q, 1e-2, 1e-3);
}

// Hutchinson's estimate on the GPU field draws the same Rademacher vectors as the CPU field
// (Philox(seed + row, 0)), so the two estimates agree to float32 accuracy, like the exact
// divergence (kDivTol), and differ from the exact divergence (the estimate is not exact).
TEST(EgnnGpuFlow, HutchinsonFieldMatchesCpuField) {
    for (const Case& c : {kCases[0], kCases[2], kCases[3]}) {
        const EgnnModel model = test::random_egnn_model(c, 12);
        auto gen = test::rng(35);
        const int B = 3;
        const std::vector<double> x = test::random_configurations(B, c.n, c.d, 1.0, 0.3, gen);
        std::vector<double> t;
        for (int b = 0; b < B; ++b) t.push_back(0.3 * (b + 1));
        FlowOptions opt;
        opt.hutchinson = true;
        opt.hutchinson_probes = 5;
        opt.hutchinson_seed = 99;
        opt.threads = 1;
        opt.device = Device::cpu;
        const FlowField cpu = egnn_flow_field(model, opt);
        opt.device = Device::cuda;
        const FlowField gpu = egnn_flow_field(model, opt);
        std::vector<double> v_cpu(x.size()), v_gpu(x.size()), v_exact(x.size());
        std::vector<double> d_cpu(B), d_gpu(B), d_exact(B);
        cpu(B, x.data(), t.data(), v_cpu.data(), d_cpu.data());
        gpu(B, x.data(), t.data(), v_gpu.data(), d_gpu.data());
        egnn_divergence(model.config, model.params.data(), B, x.data(), t.data(), v_exact.data(),
                        d_exact.data());
        double vscale = 0, dscale = 0;
        for (double y : v_cpu) vscale = std::max(vscale, std::fabs(y));
        for (double y : d_cpu) dscale = std::max(dscale, std::fabs(y));
        EXPECT_ALL_CLOSE(v_gpu, v_cpu, kFieldTol * (1 + vscale), kFieldTol) << c.name;
        EXPECT_ALL_CLOSE(d_gpu, d_cpu, kDivTol * (1 + dscale), kDivTol) << c.name;
        EXPECT_NE(d_cpu, d_exact) << c.name;
    }
}

TEST(EgnnGpuTrain, FlowMatchingLossAndGradientMatchCpu) {
    const Case c{"lj13", 13, 3, 32, 3, true, true, false};
    const EgnnModel model = test::random_egnn_model(c, 11);
    auto gen = test::rng(34);
    const int B = 8;
    const std::vector<double> x0 = test::random_normal(B * 39, gen),
                              x1 = test::random_normal(B * 39, gen);
    const std::vector<double> eps = test::random_normal(B * 39, gen);
    std::vector<double> t(B);
    for (int b = 0; b < B; ++b) t[b] = (b + 0.5) / B;
    const int64_t P = egnn_parameter_count(model.config);
    std::vector<double> g_cpu(P), g_gpu(P);
    const double l_cpu = flow_matching_loss(model, B, x0.data(), x1.data(), t.data(), eps.data(),
                                            0.01, g_cpu.data());
    const double l_gpu = flow_matching_loss(model, B, x0.data(), x1.data(), t.data(), eps.data(),
                                            0.01, g_gpu.data(), 1, Device::cuda);
    EXPECT_NEAR(l_gpu, l_cpu, 1e-4 * l_cpu);
    double scale = 0;
    for (double v : g_cpu) scale = std::max(scale, std::fabs(v));
    EXPECT_ALL_CLOSE(g_gpu, g_cpu, kGradTol * scale, kGradTol);
}

INSTANTIATE_TEST_SUITE_P(Configs, EgnnGpu_, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case>& info) {
                             return std::string(info.param.name);
                         });

}  // namespace
}  // namespace eqflow
