// The device ODE integrator (eqflow/ode_gpu.h) against the host solver, label gpu.
//
// Reference: ode_integrate (src/ode.cpp) driven by field_ode over the same CUDA field, i.e. the
// SAME float32 EGNN kernels with the solver on the host. The device integrator repeats the host's
// arithmetic operation for operation (src/common/ode_step.h, no FMA contraction on either side) and
// the EGNN kernels' per-row results do not depend on which rows share a batch, so the two runs see
// the same float32 field inputs. What can differ: CUDA's pow() may differ from glibc's in the last
// bit (it sets step sizes), which moves stage points by ~1e-16 relative and, rarely, flips the
// float32 rounding of one field input (~6e-8 relative on one evaluation). Both stay far below
// kSameFieldTol = 1e-6 (relative to the values, plus absolute), while a wrong stage, sign or
// bookkeeping error changes results at the solver's tolerance (>= 1e-4) or worse.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>

#include "egnn_test_util.h"
#include "eqflow/egnn.h"
#include "eqflow/field.h"
#include "eqflow/flow.h"
#include "eqflow/ode_gpu.h"
#include "test_util.h"

namespace eqflow {
namespace {

constexpr double kSameFieldTol = 1e-6;

EgnnModel make_model(const char* name, int n, int d, int hidden, int layers, uint64_t seed) {
    return test::random_egnn_model({name, n, d, hidden, layers}, seed);
}

std::vector<double> centred_normal(int64_t B, int n, int d, uint64_t salt) {
    auto gen = test::rng(salt);
    std::vector<double> x = test::random_normal(static_cast<size_t>(B * n * d), gen);
    remove_mean(B, n, d, x.data());
    return x;
}

struct OdeRun {
    std::vector<double> x, I, L;
    OdeStats stats;
};

OdeRun run_host(const std::shared_ptr<Field<float>>& gpu, const std::vector<double>& x, int64_t B,
                double t0, double t1, const OdeOptions& o) {
    const int64_t D = static_cast<int64_t>(x.size()) / B;
    OdeRun r{x, std::vector<double>(B), std::vector<double>(B), {}};
    ode_integrate(field_ode<float>(gpu), B, D, r.x.data(), t0, t1, o, r.I.data(), r.L.data(),
                  &r.stats);
    return r;
}

// The device integrator as the sampler's integrator, in chunks of max_chunk rows (0: default).
FlowIntegrator on_device(Field<float>& gpu, const OdeOptions& o, int64_t max_chunk) {
    return [&gpu, o, max_chunk](int64_t B, double* x, double t0, double t1, double* I, double* L,
                                OdeStats* stats) {
        ode_integrate_gpu(gpu, B, x, t0, t1, o, I, L, stats, max_chunk);
    };
}

OdeRun run_device(Field<float>& gpu, const std::vector<double>& x, int64_t B, double t0, double t1,
                  const OdeOptions& o, int64_t max_chunk = 0) {
    OdeRun r{x, std::vector<double>(B), std::vector<double>(B), {}};
    ode_integrate_gpu(gpu, B, r.x.data(), t0, t1, o, r.I.data(), r.L.data(), &r.stats, max_chunk);
    return r;
}

struct Case {
    const char* name;
    OdeMethod method;
    double t0, t1;
    int n, d;
};

const Case kCases[] = {
    {"dopri5_dw4_forward", OdeMethod::dopri5, 0.0, 1.0, 4, 2},
    {"dopri5_dw4_backward", OdeMethod::dopri5, 1.0, 0.0, 4, 2},
    {"dopri5_lj13_forward", OdeMethod::dopri5, 0.0, 1.0, 13, 3},
    {"dopri5_lj13_backward", OdeMethod::dopri5, 1.0, 0.0, 13, 3},
    {"rk4_lj13_forward", OdeMethod::rk4, 0.0, 1.0, 13, 3},
    {"rk4_dw4_backward", OdeMethod::rk4, 1.0, 0.0, 4, 2},
    {"euler_lj13_forward", OdeMethod::euler, 0.0, 1.0, 13, 3},
    {"euler_dw4_backward", OdeMethod::euler, 1.0, 0.0, 4, 2},
};

class OdeGpu_ : public ::testing::TestWithParam<Case> {};

TEST_P(OdeGpu_, MatchesHostSolverOnTheSameGpuField) {
    const Case c = GetParam();
    const EgnnModel model = make_model(c.name, c.n, c.d, 32, 3, 21);
    std::shared_ptr<Field<float>> gpu = make_cuda_field(model);
    const int64_t B = 19;  // not a multiple of any block size
    const std::vector<double> x = centred_normal(B, c.n, c.d, 41);
    OdeOptions o;
    o.method = c.method;
    o.steps = 8;
    o.atol = o.rtol = 1e-5;
    const OdeRun host = run_host(gpu, x, B, c.t0, c.t1, o);
    const OdeRun dev = run_device(*gpu, x, B, c.t0, c.t1, o);
    ASSERT_EQ(host.stats.failed, 0);
    EXPECT_ALL_CLOSE(dev.x, host.x, kSameFieldTol, kSameFieldTol);
    EXPECT_ALL_CLOSE(dev.I, host.I, kSameFieldTol, kSameFieldTol);
    EXPECT_ALL_CLOSE(dev.L, host.L, kSameFieldTol, kSameFieldTol);
    // Identical step sequences: the same number of calls, rows, accepted and rejected steps.
    EXPECT_EQ(dev.stats.function_evals, host.stats.function_evals);
    EXPECT_EQ(dev.stats.row_evals, host.stats.row_evals);
    EXPECT_EQ(dev.stats.accepted, host.stats.accepted);
    EXPECT_EQ(dev.stats.rejected, host.stats.rejected);
    EXPECT_EQ(dev.stats.failed, 0);
    // The flow moved the samples and the divergence integral is not trivially zero.
    double moved = 0;
    for (size_t k = 0; k < x.size(); ++k) moved = std::max(moved, std::fabs(dev.x[k] - x[k]));
    EXPECT_GT(moved, 1e-2);
    EXPECT_TRUE(test::not_all_zero(dev.I));
    if (c.method == OdeMethod::dopri5) {
        // Finished samples cost nothing: every row evaluation belongs to a sample's own start
        // (k1 and Hairer's trial point) or to one of its own steps (six new stages each).
        EXPECT_EQ(dev.stats.row_evals, 2 * B + 6 * (dev.stats.accepted + dev.stats.rejected));
    }
}

INSTANTIATE_TEST_SUITE_P(Solvers, OdeGpu_, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case>& info) {
                             return std::string(info.param.name);
                         });

// Each sample's result is independent of the chunk it is in: chunks of 8 give bit-identical
// results to one chunk of 37 (the per-row EGNN results do not depend on the batch).
TEST(OdeGpu, ChunksGiveTheSameResultsAsOneChunk) {
    const EgnnModel model = make_model("lj13", 13, 3, 32, 3, 22);
    const std::unique_ptr<Field<float>> gpu_owner = make_cuda_field(model);
    Field<float>& gpu = *gpu_owner;
    const int64_t B = 37;
    const std::vector<double> x = centred_normal(B, 13, 3, 42);
    for (OdeMethod m : {OdeMethod::dopri5, OdeMethod::rk4}) {
        OdeOptions o;
        o.method = m;
        o.steps = 5;
        const OdeRun one = run_device(gpu, x, B, 0.0, 1.0, o);
        const OdeRun chunked = run_device(gpu, x, B, 0.0, 1.0, o, 8);
        EXPECT_EQ(chunked.x, one.x) << ode_method_name(m);
        EXPECT_EQ(chunked.I, one.I) << ode_method_name(m);
        EXPECT_EQ(chunked.L, one.L) << ode_method_name(m);
        EXPECT_EQ(chunked.stats.row_evals, one.stats.row_evals);
        EXPECT_EQ(chunked.stats.accepted, one.stats.accepted);
        EXPECT_EQ(chunked.stats.rejected, one.stats.rejected);
        EXPECT_GT(chunked.stats.function_evals, one.stats.function_evals);
    }
}

TEST(OdeGpu, FailuresAreReportedAsOnTheHost) {
    const EgnnModel model = make_model("dw4", 4, 2, 32, 3, 23);
    std::shared_ptr<Field<float>> gpu = make_cuda_field(model);
    const int64_t B = 6, D = 8;
    std::vector<double> x = centred_normal(B, 4, 2, 43);
    // max_steps far too small for the tolerance: every sample fails, with NaN outputs.
    OdeOptions o;
    o.atol = o.rtol = 1e-8;
    o.max_steps = 2;
    OdeRun host = run_host(gpu, x, B, 0.0, 1.0, o);
    OdeRun dev = run_device(*gpu, x, B, 0.0, 1.0, o);
    EXPECT_EQ(host.stats.failed, B);
    EXPECT_EQ(dev.stats.failed, B);
    EXPECT_EQ(dev.stats.accepted, host.stats.accepted);
    EXPECT_EQ(dev.stats.rejected, host.stats.rejected);
    for (int64_t b = 0; b < B; ++b) {
        EXPECT_TRUE(std::isnan(dev.x[b * D]) && std::isnan(dev.I[b]) && std::isnan(dev.L[b]));
    }
    // A non-finite input row fails alone; the others integrate normally.
    x[2 * D + 1] = std::nan("");
    for (OdeMethod m : {OdeMethod::dopri5, OdeMethod::rk4}) {
        o = OdeOptions{};
        o.method = m;
        host = run_host(gpu, x, B, 0.0, 1.0, o);
        dev = run_device(*gpu, x, B, 0.0, 1.0, o);
        EXPECT_EQ(host.stats.failed, 1) << ode_method_name(m);
        EXPECT_EQ(dev.stats.failed, 1) << ode_method_name(m);
        EXPECT_TRUE(std::isnan(dev.I[2]) && std::isnan(dev.x[2 * D]));
        for (int64_t b = 0; b < B; ++b) {
            if (b == 2) continue;
            EXPECT_NEAR(dev.I[b], host.I[b], kSameFieldTol * (1 + std::fabs(host.I[b])));
        }
    }
}

// Against the CPU (float64) field: different field precision, so adaptive step sequences may
// differ; at atol = rtol = 1e-6 both runs are within ~50 x 1e-6 of the exact flow (the global
// error factor of test_ode), and the float32 field differs from the float64 one by ~2e-4
// relative at most (kFieldTol of test_egnn_gpu), integrated over t in [0, 1]. So x within 1e-3
// and log q within 1e-2 + 1e-3 relative (log q sums the divergence, n d tangent entries), as
// in test_egnn_gpu's SamplingMatchesCpuField; a wrong sign or stage is O(1) off.
TEST(OdeGpu, FlowSampleAndLikelihoodMatchTheCpuField) {
    FlowOptions opt;
    opt.ode.atol = opt.ode.rtol = 1e-6;
    opt.batch = 64;
    for (uint64_t seed : {24, 25, 26}) {  // three random DW4-sized models
        const EgnnModel model = make_model("dw4", 4, 2, 32, 3, seed);
        const std::unique_ptr<Field<float>> gpu_owner = make_cuda_field(model);
        Field<float>& gpu = *gpu_owner;
        const int64_t count = 50;
        const FlowSamples cpu = flow_sample(egnn_flow_field(model, opt), 4, 2, count, seed, opt);
        const FlowSamples dev =
            flow_sample(on_device(gpu, opt.ode, 16), 4, 2, count, seed, 16, opt);
        EXPECT_EQ(dev.x0, cpu.x0) << "prior rows must be Philox(seed, i) as in flow_sample";
        EXPECT_EQ(dev.count, count);
        EXPECT_EQ(dev.failed, 0);
        EXPECT_ALL_CLOSE(dev.x, cpu.x, 1e-3, 1e-3);
        EXPECT_ALL_CLOSE(dev.log_q, cpu.log_q, 1e-2, 1e-3);
        EXPECT_ALL_CLOSE(dev.path_length, cpu.path_length, 1e-3, 1e-3);

        const FlowLikelihood lc =
            flow_log_likelihood(egnn_flow_field(model, opt), 4, 2, cpu.x.data(), count, opt);
        const FlowLikelihood ld =
            flow_log_likelihood(on_device(gpu, opt.ode, 16), 4, 2, cpu.x.data(), count, 16, opt);
        EXPECT_ALL_CLOSE(ld.log_q, lc.log_q, 1e-2, 1e-3);
        EXPECT_ALL_CLOSE(ld.x0, lc.x0, 1e-3, 1e-3);
        EXPECT_ALL_CLOSE(ld.path_length, lc.path_length, 1e-3, 1e-3);
        // Round trip: the likelihood of the device's own samples is their sampling log q, and
        // the backward flow returns them to their prior points (the ODE is reversible). Two
        // integrations at 1e-6 on one field: ~1e-4 apart, so the same bounds as above.
        const FlowLikelihood back =
            flow_log_likelihood(on_device(gpu, opt.ode, 0), 4, 2, dev.x.data(), count, count, opt);
        EXPECT_ALL_CLOSE(back.log_q, dev.log_q, 1e-2, 1e-3);
        EXPECT_ALL_CLOSE(back.x0, dev.x0, 1e-3, 1e-3);
    }
    const std::unique_ptr<Field<float>> gpu_owner =
        make_cuda_field(make_model("dw4", 4, 2, 32, 3, 27));
    Field<float>& gpu = *gpu_owner;
    const FlowSamples none = flow_sample(on_device(gpu, opt.ode, 0), 4, 2, 0, 1, 1, opt);
    EXPECT_TRUE(none.x.empty() && none.log_q.empty());
}

TEST(OdeGpu, RejectsBadArguments) {
    const EgnnModel model = make_model("dw4", 4, 2, 32, 3, 28);
    FlowOptions opt;
    opt.device = Device::cuda;
    opt.ode.method = OdeMethod::rk4;
    opt.ode.steps = 0;
    EXPECT_THROW(sample_model(model, 4, 1, opt), Error);
}

}  // namespace
}  // namespace eqflow
