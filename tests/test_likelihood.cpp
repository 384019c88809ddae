// Likelihood training: the reverse mode of the exact divergence (the reference field's
// divergence_backward) and the likelihood step (eqflow/likelihood.h), against central finite
// differences; the step's forward loss against the likelihood of the sampler's RK4 solver; a
// tiny training run whose NLL falls.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "egnn_test_util.h"
#include "eqflow/egnn.h"
#include "eqflow/field.h"
#include "eqflow/flow.h"
#include "eqflow/flow_model.h"
#include "eqflow/kernel_dynamics.h"
#include "eqflow/likelihood.h"
#include "eqflow/trainer.h"
#include "test_util.h"
#include "train_test_util.h"

namespace eqflow::test {
namespace {

// Central differences with step kFdStep: truncation error ~ kFdStep^2 f''' / 6 (~1e-11 for the
// O(1) derivatives of these models) and rounding ~ 1e-16 |f| / kFdStep (~1e-11 for |f| ~ 1e-1..
// 10). The tolerance leaves two orders of magnitude above both; a wrong second-derivative term
// (a missing chain-rule factor) is O(1) relative.
constexpr double kFdStep = 1e-5;
constexpr double kFdAtol = 1e-7;
constexpr double kFdRtol = 1e-6;

// The forward loss is the sampler's RK4 likelihood (same stage arithmetic in double); only the
// summation order of the batch mean differs.
constexpr double kSameSolveTol = 1e-12;

struct Rows {
    std::vector<double> x, t;
};

Rows random_rows(const EgnnCase& c, int B, uint64_t salt) {
    EgnnInputs in = random_egnn_inputs(c, B, salt);
    // Centred, like every configuration the flow sees.
    for (int b = 0; b < B; ++b)
        for (int a = 0; a < c.d; ++a) {
            double mean = 0.0;
            for (int i = 0; i < c.n; ++i) mean += in.x[(b * c.n + i) * c.d + a];
            mean /= c.n;
            for (int i = 0; i < c.n; ++i) in.x[(b * c.n + i) * c.d + a] -= mean;
        }
    return Rows{in.x, in.t};
}

// sum_b g[b] div_b at the field's parameters.
double weighted_divergence(Field<double>& field, const Rows& r, const std::vector<double>& g) {
    const int64_t B = static_cast<int64_t>(g.size());
    const Shape xs{B, field.n_particles(), field.dim()};
    std::vector<double> div(static_cast<size_t>(B));
    FieldWorkspace ws;
    field.divergence(
        TensorView<const double>(r.x.data(), xs), TensorView<const double>(r.t.data(), Shape{B}),
        {}, TensorView<double>(div.data(), Shape{B}), ws.get(field, FieldOp::divergence, B));
    double s = 0.0;
    for (int64_t b = 0; b < B; ++b) s += g[b] * div[b];
    return s;
}

// divergence_backward against central differences of sum_b g[b] div_b, in every parameter whose
// index is a multiple of `param_stride` and every coordinate.
void check_divergence_backward(const EgnnCase& c, int B, int param_stride) {
    const EgnnModel model = random_egnn_model(c, seed() + 11);
    std::unique_ptr<Field<double>> field = make_reference_field(model, 2);
    ASSERT_TRUE(field->supports_divergence_backward());
    const Rows r = random_rows(c, B, seed() + 12);
    auto gen = rng(seed() + 13);
    const std::vector<double> g = random_normal(static_cast<size_t>(B), gen);
    const int64_t P = field->parameter_count(), nd = static_cast<int64_t>(c.n) * c.d;
    const Shape xs{B, c.n, c.d};

    std::vector<double> dp(static_cast<size_t>(P), 0.5), dx(static_cast<size_t>(B * nd), 7.0);
    FieldWorkspace ws;
    field->divergence_backward(
        TensorView<const double>(r.x.data(), xs), TensorView<const double>(r.t.data(), Shape{B}),
        TensorView<const double>(g.data(), Shape{B}), TensorView<double>(dp.data(), Shape{P}),
        TensorView<double>(dx.data(), xs), ws.get(*field, FieldOp::divergence_backward, B));
    // Parameter gradients accumulate onto the 0.5 they held.
    for (double& v : dp) v -= 0.5;
    EXPECT_TRUE(not_all_zero(dp));
    EXPECT_TRUE(not_all_zero(dx));

    std::vector<double> fd_p, an_p;
    const std::vector<double> p0 = model.params;
    for (int64_t k = 0; k < P; k += param_stride) {
        std::vector<double> p = p0;
        p[k] = p0[k] + kFdStep;
        field->set_parameters(p);
        const double up = weighted_divergence(*field, r, g);
        p[k] = p0[k] - kFdStep;
        field->set_parameters(p);
        const double down = weighted_divergence(*field, r, g);
        fd_p.push_back((up - down) / (2 * kFdStep));
        an_p.push_back(dp[k]);
    }
    field->set_parameters(p0);
    EXPECT_ALL_CLOSE(an_p, fd_p, kFdAtol, kFdRtol);

    // dL_dx[b] = g[b] d div_b / dx_b: the rows are independent, so one perturbation per
    // coordinate index moves every row at once and row b's change is g[b] d div_b / dx_b[i].
    std::vector<double> fd_x(static_cast<size_t>(B * nd));
    for (int64_t i = 0; i < nd; ++i) {
        for (int64_t b = 0; b < B; ++b) {
            Rows rp = r, rm = r;
            rp.x[b * nd + i] += kFdStep;
            rm.x[b * nd + i] -= kFdStep;
            std::vector<double> gb(static_cast<size_t>(B), 0.0);
            gb[b] = g[b];
            fd_x[b * nd + i] =
                (weighted_divergence(*field, rp, gb) - weighted_divergence(*field, rm, gb)) /
                (2 * kFdStep);
        }
    }
    EXPECT_ALL_CLOSE(dx, fd_x, kFdAtol, kFdRtol);
}

TEST(DivergenceBackward, Dw4SizeMatchesFiniteDifferences) {
    check_divergence_backward(EgnnCase{"dw4", 4, 2, 8, 2}, 3, 1);
}

TEST(DivergenceBackward, Lj13SizeMatchesFiniteDifferences) {
    check_divergence_backward(EgnnCase{"lj13", 13, 3, 4, 2}, 2, 7);
}

TEST(DivergenceBackward, WithoutAttentionOrTanhMatchesFiniteDifferences) {
    EgnnCase c{"dw4", 4, 2, 6, 2};
    c.attention = false;
    c.tanh = false;
    check_divergence_backward(c, 2, 3);
}

TEST(DivergenceBackward, DoesNotDependOnTheThreadCount) {
    const EgnnCase c{"dw4", 4, 2, 8, 2};
    const EgnnModel model = random_egnn_model(c, seed() + 21);
    const int B = 40;  // three chunks of rows
    const Rows r = random_rows(c, B, seed() + 22);
    const std::vector<double> g(static_cast<size_t>(B), 0.25);
    const int64_t P = egnn_parameter_count(model.config);
    std::vector<std::vector<double>> dp(2, std::vector<double>(static_cast<size_t>(P), 0.0));
    for (int k = 0; k < 2; ++k) {
        std::unique_ptr<Field<double>> field = make_reference_field(model, k == 0 ? 1 : 3);
        FieldWorkspace ws;
        field->divergence_backward(TensorView<const double>(r.x.data(), Shape{B, c.n, c.d}),
                                   TensorView<const double>(r.t.data(), Shape{B}),
                                   TensorView<const double>(g.data(), Shape{B}),
                                   TensorView<double>(dp[k].data(), Shape{P}), {},
                                   ws.get(*field, FieldOp::divergence_backward, B));
    }
    EXPECT_TRUE(not_all_zero(dp[0]));
    EXPECT_EQ(dp[0], dp[1]);
}

// The fast EGNN's divergence_backward (the reference's forward-over-reverse pass in float, the
// directions across SIMD lanes) against the double reference's, at the reference's parameters
// rounded to float. Float rounding through a second-order pass of 2-3 layers: each entry within
// 2e-5 of the largest (seen: 2e-7 for the parameters, 4e-6 for x), where a wrong lane seed or a
// dropped tangent term is O(1).
// LJ13's 39 directions span several passes, with a partly filled last one at every SIMD width.
void check_fast_divergence_backward(const EgnnCase& c, int B) {
    EgnnModel model = random_egnn_model(c, seed() + 31);
    for (double& p : model.params) p = static_cast<float>(p);  // both fields see the same weights
    std::unique_ptr<Field<double>> ref = make_reference_field(model, 2);
    std::unique_ptr<Field<float>> fast = make_fast_field(model, 2);
    ASSERT_TRUE(fast->supports_divergence_backward());
    Rows r = random_rows(c, B, seed() + 32);
    for (double& v : r.x) v = static_cast<float>(v);
    for (double& v : r.t) v = static_cast<float>(v);
    auto gen = rng(seed() + 33);
    std::vector<double> g = random_normal(static_cast<size_t>(B), gen);
    for (double& v : g) v = static_cast<float>(v);
    const int64_t P = ref->parameter_count(), nd = static_cast<int64_t>(c.n) * c.d;
    const Shape xs{B, c.n, c.d};

    std::vector<double> dp(static_cast<size_t>(P), 0.0), dx(static_cast<size_t>(B * nd));
    FieldWorkspace ws;
    ref->divergence_backward(
        TensorView<const double>(r.x.data(), xs), TensorView<const double>(r.t.data(), Shape{B}),
        TensorView<const double>(g.data(), Shape{B}), TensorView<double>(dp.data(), Shape{P}),
        TensorView<double>(dx.data(), xs), ws.get(*ref, FieldOp::divergence_backward, B));

    const std::vector<float> xf(r.x.begin(), r.x.end()), tf(r.t.begin(), r.t.end()),
        gf(g.begin(), g.end());
    std::vector<float> dpf(static_cast<size_t>(P), 0.5f), dxf(static_cast<size_t>(B * nd), 7.0f);
    FieldWorkspace wsf;
    fast->divergence_backward(
        TensorView<const float>(xf.data(), xs), TensorView<const float>(tf.data(), Shape{B}),
        TensorView<const float>(gf.data(), Shape{B}), TensorView<float>(dpf.data(), Shape{P}),
        TensorView<float>(dxf.data(), xs), wsf.get(*fast, FieldOp::divergence_backward, B));
    std::vector<double> got_p(dpf.begin(), dpf.end()), got_x(dxf.begin(), dxf.end());
    for (double& v : got_p) v -= 0.5;  // parameter gradients accumulate onto what they held
    EXPECT_TRUE(not_all_zero(dp));
    double scale_p = 0.0, scale_x = 0.0, err_p = 0.0, err_x = 0.0;
    for (int64_t k = 0; k < P; ++k) {
        scale_p = std::max(scale_p, std::fabs(dp[k]));
        err_p = std::max(err_p, std::fabs(got_p[k] - dp[k]));
    }
    for (int64_t k = 0; k < B * nd; ++k) {
        scale_x = std::max(scale_x, std::fabs(dx[k]));
        err_x = std::max(err_x, std::fabs(got_x[k] - dx[k]));
    }
    std::printf("%s fast divergence_backward: max error %.2e of %.2e (params), %.2e of %.2e (x)\n",
                c.name, err_p, scale_p, err_x, scale_x);
    EXPECT_ALL_CLOSE(got_p, dp, 2e-5 * scale_p, 1e-5);
    EXPECT_ALL_CLOSE(got_x, dx, 2e-5 * scale_x, 1e-5);
}

TEST(DivergenceBackward, FastEgnnMatchesTheReferenceDw4) {
    check_fast_divergence_backward(EgnnCase{"dw4", 4, 2, 32, 3}, 20);
}

// The paper's LJ13 size over 18 rows: more than a chunk of 16, and the lanes' float gradient
// flushed into double every 2 rows (468 edge terms a row).
TEST(DivergenceBackward, FastEgnnMatchesTheReferenceLj13) {
    check_fast_divergence_backward(EgnnCase{"lj13", 13, 3, 32, 3}, 18);
}

TEST(DivergenceBackward, FastEgnnMatchesTheReferenceWithoutAttentionOrTanhTyped) {
    EgnnCase c{"typed", 5, 3, 8, 2};
    c.attention = false;
    c.tanh = false;
    c.typed = true;
    check_fast_divergence_backward(c, 4);
}

TEST(DivergenceBackward, FastEgnnDoesNotDependOnTheThreadCount) {
    const EgnnCase c{"dw4", 4, 2, 8, 2};
    const EgnnModel model = random_egnn_model(c, seed() + 41);
    const int B = 40;  // three chunks of rows
    const Rows r = random_rows(c, B, seed() + 42);
    const std::vector<float> x(r.x.begin(), r.x.end()), t(r.t.begin(), r.t.end()),
        g(static_cast<size_t>(B), 0.25f);
    const int64_t P = egnn_parameter_count(model.config);
    std::vector<std::vector<float>> dp(2, std::vector<float>(static_cast<size_t>(P), 0.0f));
    std::vector<std::vector<float>> dx(2, std::vector<float>(x.size()));
    for (int k = 0; k < 2; ++k) {
        std::unique_ptr<Field<float>> field = make_fast_field(model, k == 0 ? 1 : 3);
        FieldWorkspace ws;
        field->divergence_backward(TensorView<const float>(x.data(), Shape{B, c.n, c.d}),
                                   TensorView<const float>(t.data(), Shape{B}),
                                   TensorView<const float>(g.data(), Shape{B}),
                                   TensorView<float>(dp[k].data(), Shape{P}),
                                   TensorView<float>(dx[k].data(), Shape{B, c.n, c.d}),
                                   ws.get(*field, FieldOp::divergence_backward, B));
    }
    EXPECT_TRUE(not_all_zero(std::vector<double>(dp[0].begin(), dp[0].end())));
    EXPECT_EQ(dp[0], dp[1]);
    EXPECT_EQ(dx[0], dx[1]);
}

// The likelihood step's gradient is the exact gradient of its discrete loss: central
// differences through a 3-step RK4 solve, every parameter.
TEST(LikelihoodStep, GradientMatchesFiniteDifferencesOfTheDiscreteLoss) {
    const EgnnCase c{"dw4", 4, 2, 6, 2};
    const EgnnModel model = random_egnn_model(c, seed() + 31);
    std::unique_ptr<Field<double>> field = make_reference_field(model, 2);
    const int B = 3;
    const Rows r = random_rows(c, B, seed() + 32);
    LikelihoodStepOptions so;
    so.ode_steps = 3;
    so.batch = B;
    LikelihoodStep<double> step(*field, so, r.x.data(), B);
    const int64_t P = field->parameter_count();
    std::vector<double> grad(static_cast<size_t>(P), 3.0);
    const double loss = step.evaluate(r.x.data(), B, grad.data());
    ASSERT_TRUE(std::isfinite(loss));
    EXPECT_TRUE(not_all_zero(grad));
    std::vector<double> fd(static_cast<size_t>(P));
    const std::vector<double> p0 = model.params;
    for (int64_t k = 0; k < P; ++k) {
        std::vector<double> p = p0;
        p[k] = p0[k] + kFdStep;
        field->set_parameters(p);
        const double up = step.evaluate(r.x.data(), B, nullptr);
        p[k] = p0[k] - kFdStep;
        field->set_parameters(p);
        const double down = step.evaluate(r.x.data(), B, nullptr);
        fd[k] = (up - down) / (2 * kFdStep);
    }
    field->set_parameters(p0);
    EXPECT_ALL_CLOSE(grad, fd, kFdAtol, kFdRtol);
    // Both halves of the gradient matter: with the divergence term dropped (a field whose
    // divergence_backward added nothing) the gradient would be the prior term's alone. Check
    // the loss really depends on the divergence integral: it is not 1/2 |x0|^2 alone.
    FlowOptions fo;
    fo.ode.method = OdeMethod::rk4;
    fo.ode.steps = so.ode_steps;
    fo.reference = true;
    const FlowLikelihood l = model_log_likelihood(model, r.x.data(), B, fo);
    double prior_only = 0.0;
    for (int b = 0; b < B; ++b) {
        double sq = 0.0;
        for (int k = 0; k < c.n * c.d; ++k) sq += l.x0[b * c.n * c.d + k] * l.x0[b * c.n * c.d + k];
        prior_only += 0.5 * sq / B;
    }
    EXPECT_GT(std::fabs(loss - prior_only), 1e-3);
}

// The forward loss is the NLL (paper convention) of the sampler's own RK4 solve.
TEST(LikelihoodStep, LossIsTheNllOfTheRk4Solve) {
    const EgnnCase c{"lj13", 13, 3, 8, 2};
    const EgnnModel model = random_egnn_model(c, seed() + 41);
    std::unique_ptr<Field<double>> field = make_reference_field(model, 2);
    const int B = 5;
    const Rows r = random_rows(c, B, seed() + 42);
    LikelihoodStepOptions so;
    so.ode_steps = 4;
    so.batch = B;
    LikelihoodStep<double> step(*field, so, r.x.data(), B);
    const double loss = step.evaluate(r.x.data(), B, nullptr);
    FlowOptions fo;
    fo.ode.method = OdeMethod::rk4;
    fo.ode.steps = so.ode_steps;
    fo.reference = true;
    const FlowLikelihood l = model_log_likelihood(model, r.x.data(), B, fo);
    double nll = 0.0;
    for (double lq : l.log_q) nll -= lq / B;
    nll -= 0.5 * (c.n - 1) * c.d * std::log(2 * M_PI);  // the paper's convention
    EXPECT_NEAR(loss, nll, kSameSolveTol * std::fabs(nll) + kSameSolveTol);
}

TEST(LikelihoodStep, RefusesAFieldWithoutSecondDerivatives) {
    const EgnnModel model = random_egnn_model(EgnnCase{"dw4", 4, 2, 8, 2}, 1);
    std::unique_ptr<Field<double>> ref = make_reference_field(model, 1);
    const std::vector<double> x(16, 0.0);
    LikelihoodStepOptions so;
    so.batch = 2;
    so.ode_steps = 0;
    EXPECT_THROW(LikelihoodStep<double>(*ref, so, x.data(), 2), Error);
}

// A tiny run through the trainer: the NLL of the training data (the first batch) falls.
TEST(LikelihoodTraining, TinyDw4RunLowersTheNll) {
    const std::vector<double> data = dw4_data(40, 3);
    TrainOptions o;
    o.likelihood = true;
    o.ode_steps = 3;
    o.epochs = 6;
    o.batch = 8;
    o.hidden = 8;
    o.layers = 2;
    o.lr = 5e-3;
    o.seed = 5;
    o.validation_fraction = 0.2;  // 32 train / 8 validation -> 4 steps per epoch, 24 steps
    o.threads = 2;
    o.log_every = 4;
    std::vector<double> val_losses;
    o.on_epoch = [&](int64_t, double vl) { val_losses.push_back(vl); };
    const TrainResult r = train_flow_matching(o, data, 40, 4, 2);
    EXPECT_EQ(r.step, 24);
    EXPECT_EQ(r.skipped, 0);
    ASSERT_EQ(val_losses.size(), 6u);

    // The NLL of all the data before (the initial model) and after.
    EgnnConfig config = default_egnn_config("dw4", 4, 2);
    config.hidden = 8;
    config.layers = 2;
    const FlowModel initial = EgnnModel{config, egnn_init_parameters(config, o.seed)};
    auto nll = [&](const FlowModel& m) {
        std::unique_ptr<Field<double>> f = make_reference_field(m, 2);
        LikelihoodStepOptions so;
        so.ode_steps = o.ode_steps;
        so.batch = 40;
        LikelihoodStep<double> s(*f, so, data.data(), 40);
        return s.evaluate(data.data(), 40, nullptr);
    };
    const double before = nll(initial), after = nll(r.model);
    std::printf("dw4 tiny likelihood run: NLL %.4f -> %.4f, validation %.4f -> %.4f\n", before,
                after, val_losses.front(), val_losses.back());
    // A real decrease, not rounding: the initial field is almost zero (gain 0.001), so its NLL is
    // the prior's, and 24 Adam steps at lr 5e-3 fit the DW4 radial shell by well over 0.1 nats.
    EXPECT_LT(after, before - 0.1);
    EXPECT_LT(val_losses.back(), val_losses.front());
}

// The fast kernel field (float32) is the float backend with divergence_backward, so
// LikelihoodStep<float> runs on it; its loss and gradient follow the double reference's to float
// accuracy. The field's outputs are float (each relative to its scale within 2e-5, see
// test_kernel_dynamics.cpp); the solver sums y, k, the divergence integral and the cotangents in
// double, so the loss carries the field's error summed over 4 N stages, not the float rounding of
// N steps of y. A formula difference (a missing term) would be O(1).
// The float step on `model`'s fast field against the double step on its reference field: the
// same B rows of DW4 data through `ode_steps` RK4 steps, loss within 1e-5, gradient within 1e-4
// of its largest entry.
void expect_float_step_follows_the_reference(const FlowModel& model, int B, int ode_steps,
                                             const char* what) {
    const std::vector<double> data = dw4_data(B, 3);
    std::unique_ptr<Field<double>> ref = make_reference_field(model, 2);
    std::unique_ptr<Field<float>> fast = make_fast_field(model, 2);
    LikelihoodStepOptions so;
    so.ode_steps = ode_steps;
    so.batch = B;
    LikelihoodStep<double> sr(*ref, so, data.data(), B);
    LikelihoodStep<float> sf(*fast, so, data.data(), B);
    const size_t P = static_cast<size_t>(ref->parameter_count());
    std::vector<double> gr(P), gf(P);
    const double lr = sr.evaluate(data.data(), B, gr.data());
    const double lf = sf.evaluate(data.data(), B, gf.data());
    ASSERT_TRUE(std::isfinite(lr));
    EXPECT_TRUE(not_all_zero(gr));
    double scale = 0.0;
    for (double g : gr) scale = std::max(scale, std::fabs(g));
    std::printf("%s likelihood, float vs double: loss %.8f vs %.8f, gradient scale %.3g\n", what,
                lf, lr, scale);
    EXPECT_NEAR(lf, lr, 1e-5 * (1.0 + std::fabs(lr)));
    EXPECT_ALL_CLOSE(gf, gr, 1e-4 * scale, 1e-4);
}

TEST(LikelihoodStep, FastKernelFieldFollowsTheReference) {
    KernelModel m;
    m.config = default_kernel_config("dw4", 4, 2);
    auto gen = rng(seed() + 51);
    // Weights of a trained field's size (0.3 gives a field whose 5-step RK4 solve is chaotic:
    // gradients of 3e4 whose float and double values differ in sign).
    m.params = random_normal(static_cast<size_t>(kernel_parameter_count(m.config)), gen, 0.05);
    expect_float_step_follows_the_reference(m, 16, 5, "kernel");
}

// The same for the EGNN: LikelihoodStep<float> on the fast EGNN (its divergence_backward across
// SIMD lanes) follows the double reference's loss and exact gradient to float accuracy.
TEST(LikelihoodStep, FastEgnnFieldFollowsTheReference) {
    EgnnModel m = random_egnn_model(EgnnCase{"dw4", 4, 2, 16, 2}, seed() + 61);
    for (double& p : m.params) p = static_cast<float>(p);  // both fields see the same weights
    expect_float_step_follows_the_reference(m, 12, 3, "EGNN");
}

// Through the trainer: --objective likelihood with the kernel field runs the fast float field
// unless `reference` is set, and its run follows the reference run: same first loss to float
// accuracy, the same fall of the validation NLL within a few percent of the change.
TEST(LikelihoodTraining, FastKernelRunFollowsTheReferenceRun) {
    const std::vector<double> data = dw4_data(64, 3);
    TrainOptions o;
    o.likelihood = true;
    o.field = FieldKind::kernel;
    o.ode_steps = 4;
    o.epochs = 3;
    o.batch = 16;
    o.lr = 5e-3;
    o.seed = 5;
    o.validation_fraction = 0.25;  // 48 train / 16 validation -> 3 steps per epoch
    o.threads = 2;
    o.log_every = 1;
    auto run = [&](bool reference, std::vector<double>& losses, std::vector<double>& val) {
        TrainOptions a = o;
        a.reference = reference;
        a.progress = [&](int64_t, int64_t, double loss, double) { losses.push_back(loss); };
        a.on_epoch = [&](int64_t, double vl) { val.push_back(vl); };
        return train_flow_matching(a, data, 64, 4, 2);
    };
    std::vector<double> lf, lr, vf, vr;
    const TrainResult fast = run(false, lf, vf);
    const TrainResult ref = run(true, lr, vr);
    ASSERT_EQ(lf.size(), 9u);
    ASSERT_EQ(lr.size(), 9u);
    ASSERT_EQ(vf.size(), 3u);
    ASSERT_EQ(vr.size(), 3u);
    EXPECT_EQ(fast.skipped, 0);
    std::printf(
        "kernel likelihood run, float vs double: first loss %.9f vs %.9f, last %.9f vs "
        "%.9f, validation %.9f -> %.9f vs %.9f -> %.9f\n",
        lf.front(), lr.front(), lf.back(), lr.back(), vf.front(), vf.back(), vr.front(), vr.back());
    EXPECT_NEAR(lf.front(), lr.front(), 1e-5 * (1.0 + std::fabs(lr.front())));
    EXPECT_LT(vr.back(), lr.front() - 1.0);
    EXPECT_LT(vf.back(), lf.front() - 1.0);
    EXPECT_NEAR(vf.back(), vr.back(), 0.02 * std::fabs(lr.front() - vr.back()));
}

TEST(LikelihoodTraining, CudaIsRefusedWithAClearError) {
    const std::vector<double> data = dw4_data(8, 3);
    TrainOptions o;
    o.likelihood = true;
    o.device = Device::cuda;
    o.batch = 4;
    try {
        train_flow_matching(o, data, 8, 4, 2);
        FAIL() << "no error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("not built"), std::string::npos) << e.what();
    }
}

}  // namespace
}  // namespace eqflow::test
