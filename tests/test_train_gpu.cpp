// The device-resident flow-matching step (eqflow/train_step.h on the CUDA field) against the CPU
// reference trainer (eqflow/trainer.h, eqflow/optim.h), label gpu:
//   Adam kernel vs adam_update; device draws vs the trainer's draws (bit for bit); one whole
//   step (fm, ot, eqot; DW4 and a typed LJ-like system) vs the CPU step on the same batch; a
//   short DW4 training run's validation loss vs the CPU run's; no device allocation per step;
//   the step replayed as a CUDA graph vs the same step launched kernel by kernel (bit for bit),
//   and capture refusing what it must.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "cuda_graph.h"
#include "eqflow/buffer.h"
#include "eqflow/egnn.h"
#include "eqflow/field.h"
#include "eqflow/flow.h"
#include "eqflow/kernel_dynamics.h"
#include "eqflow/mcmc.h"
#include "eqflow/optim.h"
#include "eqflow/systems.h"
#include "eqflow/tensor.h"
#include "eqflow/train_step.h"
#include "eqflow/trainer.h"
#include "test_util.h"
#include "train_ops.h"
#include "train_test_util.h"

namespace eqflow {
namespace {

// ---------------------------------------------------------------------------------------------
// (a) Adam on the device against adam_update on the host.
// The budget and inputs of tests/test_train_math.cpp (which checks the same element function
// compiled for the host; see train_test_util.h). The device may contract a*b+c into FMAs and its
// pow() may differ from libm's in the last bit: 1e-16 relative, invisible at these tolerances.
using test::kAdamAtolPerLr;
using test::kAdamRtol;
using test::kAdamSteps;
using test::kMomentAtol;

TEST(TrainGpu, AdamKernelMatchesHostAdam) {
    const int64_t P = 1000 + 37;  // not a multiple of the block
    const double lr = 1e-2;
    const test::AdamInputs in = test::random_adam_inputs(P, 81);
    const std::vector<float>& p = in.p;
    std::vector<double> pd(p.begin(), p.end());
    Tensor<float> pdev = Tensor<float>::from_host(p, Shape{P}, Device::cuda);
    Tensor<float> mdev = Tensor<float>::zeros(Shape{P}, Device::cuda);
    Tensor<float> vdev = Tensor<float>::zeros(Shape{P}, Device::cuda);
    AdamState st;
    const AdamOptions o;
    for (int s = 0; s < kAdamSteps; ++s) {
        const std::vector<float>& g = in.g[s];
        Tensor<float> gdev = Tensor<float>::from_host(g, Shape{P}, Device::cuda);
        // The step's Adam operation on the device (src/train_ops.h), update number s + 1.
        train_math::TrainScalars sc;
        sc.adam_step = s;
        Buffer<train_math::TrainScalars> sd(1, Device::cuda);
        sd.copy_from_host(&sc, 1);
        train_ops::adam_update<float>(Device::cuda, P, pdev.data(), gdev.data(), mdev.data(),
                                      vdev.data(), nullptr, 0.0, lr, nullptr, o.beta1, o.beta2,
                                      o.eps, sd.data(), nullptr);
        const std::vector<double> gd(g.begin(), g.end());
        adam_update(o, lr, P, pd.data(), gd.data(), st);
    }
    const std::vector<float> pg = pdev.to_vector();
    EXPECT_ALL_CLOSE(pg, pd, kAdamAtolPerLr * lr, kAdamRtol);
    EXPECT_ALL_CLOSE(mdev.to_vector(), st.m, kMomentAtol, kAdamRtol);
    EXPECT_ALL_CLOSE(vdev.to_vector(), st.v, 1e-12, kAdamRtol);
    int moved = 0;
    for (int64_t i = 0; i < P; ++i) moved += pg[i] != p[i];
    EXPECT_EQ(moved, P) << "the kernel left parameters untouched";
}

// ---------------------------------------------------------------------------------------------
// Fixtures shared by (b)-(e).

struct StepCase {
    const char* name;
    int n, d, hidden, layers;
    bool typed;
    CouplingKind objective;
};

EgnnModel make_model(const StepCase& c, uint64_t seed) {
    EgnnModel m;
    m.config = default_egnn_config(c.typed ? "lj" : "dw4", c.n, c.d);
    m.config.system = c.name;
    m.config.hidden = c.hidden;
    m.config.layers = c.layers;
    if (c.typed)
        for (int i = 0; i < c.n; ++i) m.config.atom_types.push_back(i % 2 == 0 ? 0 : (i % 3));
    m.params = egnn_init_parameters(m.config, seed);
    // As in tests/test_egnn_gpu.cpp: the initial coordinate head is tiny (gain 0.001); scale it
    // so the field and the gradient are O(1) and a wrong kernel cannot hide in the tolerance.
    for (const ParamEntry& p : egnn_parameter_layout(m.config))
        if (p.name.find("coord_mlp.2.weight") != std::string::npos)
            for (int64_t k = 0; k < shape_numel(p.shape); ++k) m.params[p.offset + k] *= 300.0;
    // The device holds float32 parameters: give the CPU reference the same values.
    for (double& v : m.params) v = static_cast<float>(v);
    return m;
}

// count centred configurations, float32-representable (the device stores the set in float32,
// so the CPU reference then sees exactly the device's rows).
std::vector<double> make_train(const StepCase& c, int64_t count, std::mt19937_64& gen) {
    std::vector<double> x;
    for (int64_t k = 0; k < count; ++k) {
        std::vector<double> r = test::random_configuration(c.n, c.d, 1.2, 0.4, gen);
        remove_mean(1, c.n, c.d, r.data());
        x.insert(x.end(), r.begin(), r.end());
    }
    for (double& v : x) v = static_cast<float>(v);
    return x;
}

std::vector<int64_t> shuffled(int64_t count, std::mt19937_64& gen) {
    std::vector<int64_t> p(static_cast<size_t>(count));
    std::iota(p.begin(), p.end(), 0);
    std::shuffle(p.begin(), p.end(), gen);
    return p;
}

// The CPU trainer's batch j of step `step` (rows of `train` in the epoch's `order`), before any
// coupling: the draws of rows step * B + b and the training rows order[j * B + b].
struct Batch {
    std::vector<double> x0, t, eps, x1;
};

Batch cpu_batch(const StepCase& c, uint64_t draw_seed, int64_t B, const std::vector<double>& train,
                const std::vector<int64_t>& order, int64_t step, int64_t j,
                double time_power = 1.0) {
    const int64_t D = c.n * c.d;
    Batch r{std::vector<double>(B * D), std::vector<double>(B), std::vector<double>(B * D),
            std::vector<double>(B * D)};
    for (int64_t b = 0; b < B; ++b) {
        draw_training_row(draw_seed, static_cast<uint64_t>(step * B + b), c.n, c.d,
                          r.x0.data() + b * D, r.t.data() + b, r.eps.data() + b * D, time_power);
        const int64_t src = order[static_cast<size_t>(j * B + b)];
        std::copy(train.begin() + src * D, train.begin() + (src + 1) * D, r.x1.begin() + b * D);
    }
    return r;
}

// ---------------------------------------------------------------------------------------------
// (b) The device draws are the CPU trainer's draws, bit for bit (both run
// train_math::draw_row: Philox normals built from correctly rounded operations, and a mean
// removal of additions, one division and subtractions). The gathered rows are the stored float32
// rows widened exactly. n*d = 15 (odd) exercises the spare normal carried into eps. With a time
// power (FlowMatchingStepOptions::time_power) t = u^(1/A) goes through the device's pow, which
// may round differently from the host's (CUDA's double pow within 2 ulps, libm's within 1): t to
// 4 ulps there, everything else bit for bit.
TEST(TrainGpu, DeviceDrawsAndGatherAreBitIdenticalToTheTrainer) {
    for (const double time_power : {1.0, 2.5})
        for (const StepCase c : {StepCase{"dw4", 4, 2, 16, 2, false, CouplingKind::fm},
                                 StepCase{"lj5_typed", 5, 3, 16, 2, true, CouplingKind::fm}}) {
            auto gen = test::rng(82);
            const int64_t count = 37, B = 6;
            const std::vector<double> train = make_train(c, count, gen);
            const EgnnModel model = make_model(c, 5);
            FlowMatchingStepOptions o;
            o.objective = c.objective;
            o.batch = B;
            o.draw_seed = test::seed() ^ 0xABCDEFull;
            o.time_power = time_power;
            o.atom_types = model.config.atom_types;
            const std::unique_ptr<Field<float>> net = make_cuda_field(model);
            FlowMatchingStep<float> gfm(*net, o, train.data(), count, train.data(), count);
            const std::vector<int64_t> order = shuffled(count, gen);
            gfm.set_order(order);
            const int64_t step = 11, j = 3;
            gfm.step(step, j, 1e-4);
            const FlowMatchingStep<float>::Snapshot s = gfm.snapshot();
            const auto [x0, t, eps, x1] =
                cpu_batch(c, o.draw_seed, B, train, order, step, j, time_power);
            EXPECT_EQ(s.x0, x0) << c.name;
            if (time_power == 1.0) {
                EXPECT_EQ(s.t, t) << c.name;
            } else {
                const std::vector<double> uniform =
                    cpu_batch(c, o.draw_seed, B, train, order, step, j).t;
                ASSERT_EQ(s.t.size(), t.size());
                for (size_t b = 0; b < t.size(); ++b) {
                    EXPECT_NEAR(s.t[b], t[b], 8.9e-16 * t[b]) << c.name << " row " << b;
                    EXPECT_GT(s.t[b], uniform[b]) << c.name << ": A > 1 moves t towards 1";
                }
            }
            EXPECT_EQ(s.eps, eps) << c.name;
            EXPECT_EQ(s.x1, x1) << c.name;
            EXPECT_EQ(s.x1_paired, x1) << c.name << ": fm pairs as drawn";
            EXPECT_TRUE(test::not_all_zero(s.x0));
        }
}

// ---------------------------------------------------------------------------------------------
// (c) One whole device step against the CPU reference step on the same batch and draws.
// Loss: float32 network against double, 1e-4 relative (as tests/test_egnn_gpu.cpp's
// flow_matching_loss check on the device). Gradient: kGradTol of the largest entry (as that file's
// backward check). Coupling: both sides run the same double-precision search on the same inputs, so
// the aligned rows agree to double rounding (kCoupleTol; an assignment that differed would be
// O(1)). Parameters after one Adam step: update 1 is lr * g / (|g| + 1e-8), i.e. lr * sign(g)
// unless |g| is tiny; so where |g_ref| exceeds 10x the gradient tolerance the sign is certain and
// the new parameter must match to one float32 ulp (rounding the result once) plus 1e-6 lr;
// elsewhere the sign may legitimately differ and only Adam's bound |dp| <= lr is checked.
constexpr double kLossRtol = 1e-4;
constexpr double kGradTol = 1e-3;
constexpr double kCoupleTol = 1e-9;
constexpr double kFloatUlp = 1.2e-7;  // 2^-23

class TrainGpuStep : public ::testing::TestWithParam<StepCase> {};

TEST_P(TrainGpuStep, MatchesTheCpuReferenceStep) {
    const StepCase c = GetParam();
    auto gen = test::rng(83);
    const int64_t count = 48, B = 12;
    const std::vector<double> train = make_train(c, count, gen);
    const EgnnModel model = make_model(c, 6);
    const int64_t P = static_cast<int64_t>(model.params.size());
    FlowMatchingStepOptions o;
    o.objective = c.objective;
    o.batch = B;
    o.sigma = 0.01;
    o.draw_seed = test::seed() + 99;
    o.atom_types = model.config.atom_types;
    o.ema_decay = 0.9;
    const double lr = 1e-3;
    const int64_t step = 7, j = 2;
    const std::unique_ptr<Field<float>> net = make_cuda_field(model);
    FlowMatchingStep<float> gfm(*net, o, train.data(), count, train.data(), count);
    const std::vector<int64_t> order = shuffled(count, gen);
    gfm.set_order(order);
    gfm.step(step, j, lr);
    const FlowMatchingStep<float>::Snapshot s = gfm.snapshot();
    std::vector<double> p_gpu, ema_gpu;
    AdamState adam_gpu;
    int64_t skipped = -1;
    gfm.download_state(p_gpu, adam_gpu, &ema_gpu, &skipped);

    // The CPU reference step: the trainer's own pieces in double.
    auto [x0, t, eps, x1] = cpu_batch(c, o.draw_seed, B, train, order, step, j);
    couple_batch(c.objective, B, c.n, c.d, x0.data(), x1.data(), false, model.config.atom_types);
    std::vector<double> g_ref(static_cast<size_t>(P));
    const double l_ref = flow_matching_loss(model, B, x0.data(), x1.data(), t.data(), eps.data(),
                                            o.sigma, g_ref.data());
    std::vector<double> p_ref = model.params, ema_ref = model.params;
    AdamState adam_ref;
    adam_update(AdamOptions{}, lr, P, p_ref.data(), g_ref.data(), adam_ref);
    ema_update(o.ema_decay, P, p_ref.data(), ema_ref.data());

    EXPECT_EQ(s.x0, x0);
    EXPECT_ALL_CLOSE(s.x1_paired, x1, kCoupleTol, kCoupleTol) << c.name;
    EXPECT_NEAR(s.loss, l_ref, kLossRtol * l_ref) << c.name;
    double gmax = 0;
    for (double v : g_ref) gmax = std::max(gmax, std::fabs(v));
    ASSERT_GT(gmax, 1e-2) << "the gradient is too small for the comparison to mean anything";
    EXPECT_ALL_CLOSE(s.grad, g_ref, kGradTol * gmax, kGradTol) << c.name;

    EXPECT_EQ(adam_gpu.step, 1);
    EXPECT_EQ(skipped, 0);
    int determined = 0, nonzero = 0;
    for (int64_t i = 0; i < P; ++i) {
        const double p0 = model.params[i], g = g_ref[i];
        const double ulp = kFloatUlp * std::max(std::fabs(p0), std::fabs(p_ref[i]));
        if (g != 0) ++nonzero;
        if (std::fabs(g) > 10 * kGradTol * gmax) {
            ++determined;
            EXPECT_NEAR(p_gpu[i], p_ref[i], ulp + 1e-6 * lr) << c.name << " parameter " << i;
            EXPECT_NEAR(ema_gpu[i], ema_ref[i], 0.1 * (ulp + 1e-6 * lr) + 1e-14 * std::fabs(p0))
                << c.name << " EMA " << i;
        } else {
            EXPECT_LE(std::fabs(p_gpu[i] - p0), lr * (1 + 1e-6) + ulp)
                << c.name << " parameter " << i;
        }
    }
    // On the CPU reference ~18-22% of the nonzero gradient entries clear the threshold (the
    // rest are below 1% of the largest): at least 1/8 must, or the check above means little.
    EXPECT_GE(8 * determined, nonzero) << "too few parameters with a certain update direction";
    // m after one step is 0.1 g (float32 of the device gradient).
    std::vector<double> m_ref(g_ref.size());
    for (size_t i = 0; i < g_ref.size(); ++i) m_ref[i] = 0.1 * g_ref[i];
    EXPECT_ALL_CLOSE(adam_gpu.m, m_ref, 0.1 * kGradTol * gmax, kGradTol) << c.name;
    // The EMA is kept in double on the device: 0.9 p0 + 0.1 p1 of the device's own p1, to a few
    // double roundings (it agrees with the CPU EMA where the update direction is certain, above).
    std::vector<double> ema_own(static_cast<size_t>(P));
    for (int64_t i = 0; i < P; ++i) ema_own[i] = 0.9 * model.params[i] + 0.1 * p_gpu[i];
    EXPECT_ALL_CLOSE(ema_gpu, ema_own, 1e-15, 1e-14) << c.name;
    EXPECT_NE(ema_gpu, p_gpu);
}

const StepCase kStepCases[] = {
    {"dw4_fm", 4, 2, 16, 2, false, CouplingKind::fm},
    {"dw4_ot", 4, 2, 16, 2, false, CouplingKind::ot},
    {"dw4_eqot", 4, 2, 16, 2, false, CouplingKind::eqot},
    {"lj7_typed_fm", 7, 3, 16, 2, true, CouplingKind::fm},
    {"lj7_typed_eqot", 7, 3, 16, 2, true, CouplingKind::eqot},
};
INSTANTIATE_TEST_SUITE_P(Cases, TrainGpuStep, ::testing::ValuesIn(kStepCases),
                         [](const ::testing::TestParamInfo<StepCase>& info) {
                             return std::string(info.param.name);
                         });

// ---------------------------------------------------------------------------------------------
// (d) A short DW4 training run on the GPU against the same run on the CPU: same data, split,
// order, draws and couplings; only float32 arithmetic differs. Calibration of the CPU run (seed 5,
// 320 steps, measured when this test was written): rounding the data to float32 or scaling the
// learning rate by 1 + 1e-6 changes no printed digit of the final validation loss; scaling every
// update by 1 + 1e-2 changes it by < 0.4% (first epoch: < 1.7%); other seeds move it by 5% (fm)
// and 30% (eqot). Float32 perturbs the updates far less than 1% (Adam's first moves are lr *
// sign(g), exact wherever the sign is certain), so kRunRtol = 2% is several times the expected
// difference yet well inside the seed-to-seed spread. The window's training loss averages only
// 16 batches: twice that.
constexpr double kRunRtol = 0.02;

TEST(TrainGpu, ShortDw4RunMatchesTheCpuRun) {
    const std::vector<double> x = test::dw4_data(288, 3);
    for (CouplingKind kind : {CouplingKind::fm, CouplingKind::eqot}) {
        TrainOptions o;
        o.objective = kind;
        o.epochs = 40;  // 259 train rows / batch 32 -> 8 steps an epoch -> 320 steps
        o.batch = 32;
        o.hidden = 16;
        o.layers = 2;
        o.seed = 5;
        o.lr = 2e-3;
        o.ema_decay = 0.99;
        o.log_every = 16;
        std::vector<double> val_cpu, val_gpu;
        o.device = Device::cpu;
        o.on_epoch = [&](int64_t, double v) { val_cpu.push_back(v); };
        const TrainResult cpu = train_flow_matching(o, x, 288, 4, 2);
        o.device = Device::cuda;
        o.on_epoch = [&](int64_t, double v) { val_gpu.push_back(v); };
        const TrainResult gpu = train_flow_matching(o, x, 288, 4, 2);
        const char* name = coupling_name(kind);
        ASSERT_EQ(gpu.step, cpu.step) << name;
        ASSERT_EQ(gpu.step, 320) << name;
        EXPECT_EQ(gpu.skipped, 0) << name;
        ASSERT_EQ(val_gpu.size(), val_cpu.size()) << name;
        EXPECT_NEAR(gpu.validation_loss, cpu.validation_loss, kRunRtol * cpu.validation_loss)
            << name;
        EXPECT_NEAR(gpu.last_loss, cpu.last_loss, 2 * kRunRtol * cpu.last_loss) << name;
        // It learned: the final validation loss is well below the first epoch's.
        EXPECT_LT(val_gpu.back(), 0.8 * val_gpu.front()) << name;
        EXPECT_NEAR(val_gpu.front(), val_cpu.front(), kRunRtol * val_cpu.front()) << name;
        // The returned models are the downloaded device state: finite, and the EMA differs
        // from the raw weights.
        for (double p : gpu.raw_model.params) ASSERT_TRUE(std::isfinite(p));
        EXPECT_NE(gpu.model.params, gpu.raw_model.params) << name;
    }
}

// Non-finite steps are skipped on the device and counted, as on the CPU path: with sigma = inf no
// x_t is finite, so no step may change a parameter (the result holds the initial parameters as
// float32 widened back to double) and every step is counted.
TEST(TrainGpu, NonFiniteStepsAreSkippedAndCounted) {
    const std::vector<double> x = test::dw4_data(24, 3);
    TrainOptions o = test::tiny_dw4_options();  // as tests/test_trainer.cpp's CPU run
    o.objective = CouplingKind::fm;
    o.epochs = 2;
    o.device = Device::cuda;
    o.sigma = std::numeric_limits<double>::infinity();
    const TrainResult r = train_flow_matching(o, x, 24, 4, 2);
    EXPECT_GT(r.total_steps, 0);
    EXPECT_EQ(r.skipped, r.total_steps);
    const std::vector<double> p0 = egnn_init_parameters(r.raw_model.egnn_config, o.seed);
    for (size_t i = 0; i < p0.size(); ++i) {
        ASSERT_EQ(r.raw_model.params[i], static_cast<double>(static_cast<float>(p0[i]))) << i;
        ASSERT_EQ(r.model.params[i], p0[i]) << "the EMA (double) moved at " << i;
    }
}

// ---------------------------------------------------------------------------------------------
// (e) No device allocation per step or validation loss:
// every device allocation of the library goes through detail::allocate_bytes, which counts them.
TEST(TrainGpu, NoDeviceAllocationPerStep) {
    for (CouplingKind kind : {CouplingKind::fm, CouplingKind::eqot}) {
        const StepCase c{"lj7_typed", 7, 3, 16, 2, true, kind};
        auto gen = test::rng(84);
        const int64_t count = 40, B = 8, D = c.n * c.d;
        const std::vector<double> train = make_train(c, count, gen);
        const EgnnModel model = make_model(c, 7);
        FlowMatchingStepOptions o;
        o.objective = kind;
        o.batch = B;
        o.atom_types = model.config.atom_types;
        o.ema_decay = 0.5;
        const std::unique_ptr<Field<float>> net = make_cuda_field(model);
        FlowMatchingStep<float> gfm(*net, o, train.data(), count, train.data(), count);
        gfm.set_order(shuffled(count, gen));
        gfm.step(0, 0, 1e-3);
        (void)gfm.last_loss();
        const std::size_t before = detail::device_allocation_count();
        for (int64_t s = 1; s <= 25; ++s) {
            if (s % 5 == 0) gfm.set_order(shuffled(count, gen));  // a new epoch
            gfm.step(s, s % 5, 1e-3);
            if (s % 4 == 0) {
                (void)gfm.counters();
                gfm.reset_window();
            }
        }
        const double loss = gfm.last_loss();
        EXPECT_TRUE(std::isfinite(loss));
        EXPECT_EQ(detail::device_allocation_count(), before)
            << coupling_name(kind) << ": the step allocated device memory";
        EXPECT_EQ(gfm.counters().adam_step, 26);

        // The validation loss runs on the step's own buffers: no allocation either.
        (void)D;
        const double vl = gfm.validation_loss(5, B);
        EXPECT_TRUE(std::isfinite(vl));
        EXPECT_EQ(gfm.validation_loss(5, B / 2 + B), gfm.validation_loss(5, B / 2 + B));
        EXPECT_EQ(detail::device_allocation_count(), before)
            << "the validation loss allocated device memory";
    }
}

// ---------------------------------------------------------------------------------------------
// (f) The step as a CUDA graph. From its second step on, the device step is one captured graph
// replayed with new StepArgs (rows, draws, learning rate) in device memory. Replay must give the
// launched-one-by-one step's results bit for bit, over epoch changes (a new order), learning-rate
// changes, validation losses and window resets in between; anything the capture baked in that
// should change per step would show as a difference here.
struct GraphRun {
    std::vector<double> losses, val, params, ema;
    AdamState adam;
    std::string status_after_first, status;
};

// `steps` steps of batch B on the rows of train (count of them; a new epoch order every count / B
// steps), the graph on or off.
GraphRun run_steps(const std::function<std::unique_ptr<Field<float>>()>& make_field,
                   CouplingKind kind, const std::vector<double>& train, int64_t count, int64_t B,
                   int64_t steps, const std::vector<std::vector<int64_t>>& orders, bool graph,
                   const std::vector<int>& atom_types = {}) {
    FlowMatchingStepOptions o;
    o.objective = kind;
    o.atom_types = atom_types;
    o.batch = B;
    o.ema_decay = 0.9;
    o.draw_seed = 17;
    o.cuda_graph = graph;
    const std::unique_ptr<Field<float>> net = make_field();
    const int64_t per_epoch = count / B, val_rows = std::min<int64_t>(count, B + B / 2);
    FlowMatchingStep<float> st(*net, o, train.data(), count, train.data(), val_rows);
    GraphRun r;
    for (int64_t s = 0; s < steps; ++s) {
        if (s % per_epoch == 0) st.set_order(orders[static_cast<size_t>(s / per_epoch)]);
        st.step(s, s % per_epoch, s < steps / 2 + 1 ? 2e-3 : 2e-4);
        if (s == 0) r.status_after_first = st.cuda_graph_status();
        r.losses.push_back(st.last_loss());
        if (s % 5 == 4 || s == steps - 1) {
            r.val.push_back(st.validation_loss(3, val_rows));
            (void)st.counters();
            st.reset_window();
        }
    }
    int64_t skipped = -1;
    st.download_state(r.params, r.adam, &r.ema, &skipped);
    EXPECT_EQ(skipped, 0);
    EXPECT_EQ(r.adam.step, steps);
    r.status = st.cuda_graph_status();
    return r;
}

void expect_same_run(const GraphRun& replayed, const GraphRun& plain,
                     const std::vector<double>& initial, const std::string& name) {
    EXPECT_EQ(replayed.status_after_first.rfind("pending", 0), 0u) << name;
    EXPECT_EQ(replayed.status.rfind("on", 0), 0u) << name << ": " << replayed.status;
    EXPECT_EQ(plain.status.rfind("off", 0), 0u) << name << ": " << plain.status;
    ASSERT_EQ(replayed.losses.size(), plain.losses.size()) << name;
    for (size_t k = 0; k < plain.losses.size(); ++k) {
        ASSERT_TRUE(std::isfinite(plain.losses[k])) << name << " step " << k;
        EXPECT_EQ(replayed.losses[k], plain.losses[k]) << name << " step " << k;
    }
    EXPECT_EQ(replayed.val, plain.val) << name;
    EXPECT_EQ(replayed.params, plain.params) << name;
    EXPECT_EQ(replayed.adam.m, plain.adam.m) << name;
    EXPECT_EQ(replayed.adam.v, plain.adam.v) << name;
    EXPECT_EQ(replayed.ema, plain.ema) << name;
    // The steps did something (a graph that replayed nothing would leave the start).
    std::vector<double> start(initial.size());
    for (size_t k = 0; k < initial.size(); ++k) start[k] = static_cast<float>(initial[k]);
    EXPECT_NE(replayed.params, start) << name;
}

bool graph_turned_off_by_environment() {
    const char* v = std::getenv("EQFLOW_NO_CUDA_GRAPH");
    return v != nullptr && *v != '\0' && *v != '0';
}

TEST(TrainGpu, GraphReplayIsBitIdenticalToTheLaunchedStep) {
    if (graph_turned_off_by_environment()) GTEST_SKIP() << "EQFLOW_NO_CUDA_GRAPH is set";
    for (CouplingKind kind : {CouplingKind::fm, CouplingKind::ot, CouplingKind::eqot}) {
        const StepCase c{"dw4_like", 4, 2, 16, 2, false, kind};
        auto gen = test::rng(91);
        const int64_t count = 48, B = 8;
        const std::vector<double> train = make_train(c, count, gen);
        const EgnnModel model = make_model(c, 3);
        const std::vector<std::vector<int64_t>> orders = {shuffled(count, gen),
                                                          shuffled(count, gen)};
        const auto field = [&] { return make_cuda_field(model); };
        const GraphRun plain = run_steps(field, kind, train, count, B, 12, orders, false);
        const GraphRun replayed = run_steps(field, kind, train, count, B, 12, orders, true);
        expect_same_run(replayed, plain, model.params, coupling_name(kind));
    }
}

// The same with the kernel-dynamics field on CUDA, and at B = 128 for ot, where the coupling's
// B x B assignment runs on the block solver (n >= 128): both launch paths inside the graph.
TEST(TrainGpu, GraphReplayOfTheKernelFieldAndTheBlockAssignment) {
    if (graph_turned_off_by_environment()) GTEST_SKIP() << "EQFLOW_NO_CUDA_GRAPH is set";
    const StepCase c{"dw4_like", 4, 2, 16, 2, false, CouplingKind::ot};
    KernelModel model;
    model.config = default_kernel_config("dw4", c.n, c.d);
    model.params = kernel_init_parameters(model.config, 5);
    for (double& p : model.params) p = static_cast<float>(p * 300.0);  // O(1) field
    const auto field = [&] { return make_cuda_field(model); };
    for (const auto& [kind, B] :
         {std::pair{CouplingKind::fm, int64_t{8}}, std::pair{CouplingKind::ot, int64_t{128}}}) {
        auto gen = test::rng(93);
        const int64_t count = 2 * B;
        const std::vector<double> train = make_train(c, count, gen);
        const std::vector<std::vector<int64_t>> orders = {shuffled(count, gen),
                                                          shuffled(count, gen)};
        const GraphRun plain = run_steps(field, kind, train, count, B, 4, orders, false);
        const GraphRun replayed = run_steps(field, kind, train, count, B, 4, orders, true);
        expect_same_run(
            replayed, plain, model.params,
            std::string("kernel field, ") + coupling_name(kind) + ", B " + std::to_string(B));
    }
}

// eqot with atom types: its coupling writes the types with a kernel that takes them as an
// argument (no copy from host memory, which capture refuses), so the typed step is captured and
// replays the launched step bit for bit, like the untyped ones.
TEST(TrainGpu, GraphReplayOfTypedEqot) {
    if (graph_turned_off_by_environment()) GTEST_SKIP() << "EQFLOW_NO_CUDA_GRAPH is set";
    const StepCase c{"lj7_typed", 7, 3, 16, 2, true, CouplingKind::eqot};
    auto gen = test::rng(92);
    const int64_t count = 16, B = 4;
    const std::vector<double> train = make_train(c, count, gen);
    const EgnnModel model = make_model(c, 4);
    ASSERT_FALSE(model.config.atom_types.empty());
    const std::vector<std::vector<int64_t>> orders = {shuffled(count, gen), shuffled(count, gen)};
    const auto field = [&] { return make_cuda_field(model); };
    const GraphRun plain =
        run_steps(field, c.objective, train, count, B, 8, orders, false, model.config.atom_types);
    const GraphRun replayed =
        run_steps(field, c.objective, train, count, B, 8, orders, true, model.config.atom_types);
    expect_same_run(replayed, plain, model.params, "typed eqot");
}

// Capture itself (src/cuda_graph.h), on the runtime's rules: work that synchronises the capturing
// stream or throws is not captured, nothing of it runs, the runtime's error state is left clean;
// captured work runs only when launched, every time it is launched.
TEST(TrainGpu, CaptureRefusesSynchronisationAndReplaysWhatItCaptured) {
    detail::OwnedStream stream(Device::cuda);
    ASSERT_NE(stream.get(), nullptr);
    Buffer<train_math::StepArgs> args(1, Device::cuda);
    train_math::StepArgs a;
    a.first = 5;
    a.lr = 0.25;
    train_ops::set_step_args(Device::cuda, args.data(), a, stream.get());
    const auto read = [&] {
        train_math::StepArgs h;
        args.copy_to_host(&h, 1, stream.get());
        return h;
    };
    {
        detail::CapturedWork g;
        std::string why;
        train_math::StepArgs b = a;
        b.first = 99;
        EXPECT_FALSE(g.capture(
            stream.get(),
            [&] {
                train_ops::set_step_args(Device::cuda, args.data(), b, stream.get());
                synchronize(stream.get());  // a host wait: capture must refuse it
            },
            &why));
        EXPECT_FALSE(g.ready());
        EXPECT_FALSE(why.empty());
        EXPECT_EQ(read().first, 5) << "work of a failed capture ran";
    }
    {
        detail::CapturedWork g;
        std::string why;
        EXPECT_FALSE(g.capture(
            stream.get(), [] { throw std::runtime_error("inside"); }, &why));
        EXPECT_NE(why.find("inside"), std::string::npos) << why;
    }
    detail::CapturedWork g;
    std::string why;
    train_math::StepArgs b = a;
    b.first = 7;
    ASSERT_TRUE(g.capture(
        stream.get(), [&] { train_ops::set_step_args(Device::cuda, args.data(), b, stream.get()); },
        &why))
        << why;
    EXPECT_EQ(read().first, 5) << "capture ran the work";
    g.launch(stream.get());
    EXPECT_EQ(read().first, 7);
    train_ops::set_step_args(Device::cuda, args.data(), a, stream.get());
    EXPECT_EQ(read().first, 5);
    g.launch(stream.get());
    EXPECT_EQ(read().first, 7) << "a second launch did not replay";
}

}  // namespace
}  // namespace eqflow
