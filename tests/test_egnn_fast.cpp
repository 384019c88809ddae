// The fast CPU backend (float32, SIMD; src/cpu/egnn_field_fast.cpp) against the double CPU
// reference through the field interface: forward, backward, exact divergence and jvp_trace at
// the DW4, LJ13, LJ55 and alanine-dipeptide (typed) sizes plus odd ones, forward_backward (the
// training step's path) bit for bit as forward then backward, results independent of the thread
// count, and a short training run that follows the reference run.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <tuple>
#include <vector>

#include "egnn_test_util.h"
#include "eqflow/egnn.h"
#include "eqflow/field.h"
#include "eqflow/tensor.h"
#include "eqflow/train_step.h"
#include "eqflow/trainer.h"
#include "test_util.h"

namespace eqflow {
namespace {

using Case = test::EgnnCase;

// The systems' default sizes, an H that is not a multiple of the SIMD width (padding), a model
// without attention and tanh, the smallest graph (n = 2, one layer), and the typed molecule
// (aldp: 22 atoms, H 64, L 5).
const Case kCases[] = {
    {"dw4", 4, 2, 32, 3, true, true, false},
    {"n2_h16_l1", 2, 3, 16, 1, true, true, false},
    {"lj13", 13, 3, 32, 3, true, true, false},
    {"n7_h20_plain", 7, 3, 20, 2, false, false, false},
    {"aldp_typed", 22, 3, 64, 5, true, true, true},
    {"lj55", 55, 3, 64, 7, true, true, false},
};

// float32 against double through L layers of H-wide MLPs: about 1e-7 relative per operation,
// grown by the depth and by sums over up to n-1 edges per node; 2e-4 relative to the field's
// scale keeps a margin of ~10 over what float gives (measured worst: a few 1e-5) and still
// catches any wrong term, which is O(1).
constexpr double kFieldTol = 2e-4;
// The divergence and the Hutchinson trace are sums of n*d (K*n*d) tangent entries, each as
// accurate as the field; the sum is taken in double, so the error is that of the entries times
// about sqrt(n*d).
constexpr double kDivTol = 1e-3;
// Gradients: float32 backprop through L layers, summed over all edges and rows (in double
// across rows); relative to the largest entry, since many entries are near zero.
constexpr double kGradTol = 1e-3;

struct Batch {
    int B;
    std::vector<double> x, t;
};

Batch make_batch(const Case& c, int B, uint64_t salt) {
    auto gen = test::rng(salt);
    Batch b{B, {}, {}};
    for (int r = 0; r < B; ++r) {
        auto xr = test::random_configuration(c.n, c.d, 1.0, 0.3, gen);
        b.x.insert(b.x.end(), xr.begin(), xr.end());
        b.t.push_back((r + 0.5) / B);
    }
    return b;
}

template <class T>
std::vector<T> cast(const std::vector<double>& v) {
    return std::vector<T>(v.begin(), v.end());
}

double max_abs(const std::vector<double>& v) {
    double m = 0;
    for (double y : v) m = std::max(m, std::fabs(y));
    return m;
}

// The four operations of a field on host vectors (double in, the field's precision inside).
template <class T>
struct Ops {
    std::unique_ptr<Field<T>> field;
    FieldWorkspace ws;
    int n, d;

    Ops(std::unique_ptr<Field<T>> f)
        : field(std::move(f)), n(field->n_particles()), d(field->dim()) {}
    Shape xs(int B) const { return Shape{B, n, d}; }

    std::vector<double> forward(const Batch& b) {
        const std::vector<T> x = cast<T>(b.x), t = cast<T>(b.t);
        std::vector<T> v(x.size());
        field->forward(TensorView<const T>(x.data(), xs(b.B)), TensorView<const T>(t.data(), {b.B}),
                       TensorView<T>(v.data(), xs(b.B)), ws.get(*field, FieldOp::forward, b.B));
        return std::vector<double>(v.begin(), v.end());
    }
    // dL_dparams starts at ones (the contract is +=); returns (gradient, dL_dx).
    std::pair<std::vector<double>, std::vector<double>> backward(const Batch& b,
                                                                 const std::vector<double>& g) {
        const std::vector<T> x = cast<T>(b.x), t = cast<T>(b.t), gv = cast<T>(g);
        std::vector<T> gp(static_cast<size_t>(field->parameter_count()), T(1)), gx(x.size());
        field->backward(TensorView<const T>(x.data(), xs(b.B)),
                        TensorView<const T>(t.data(), {b.B}),
                        TensorView<const T>(gv.data(), xs(b.B)),
                        TensorView<T>(gp.data(), {field->parameter_count()}),
                        TensorView<T>(gx.data(), xs(b.B)), ws.get(*field, FieldOp::backward, b.B));
        std::vector<double> p(gp.begin(), gp.end());
        for (double& y : p) y -= 1.0;
        return {p, std::vector<double>(gx.begin(), gx.end())};
    }
    // forward_backward with the output gradient dL/dv = w v + g (row by row, as the field asks);
    // dL_dparams starts at ones. Returns (v, gradient, dL_dx).
    struct Fb {
        std::vector<double> v, gp, gx;
    };
    Fb forward_backward(const Batch& b, double w, const std::vector<double>& g) {
        const std::vector<T> x = cast<T>(b.x), t = cast<T>(b.t), gv = cast<T>(g);
        std::vector<T> v(x.size()), dv(x.size()), gx(x.size());
        std::vector<T> gp(static_cast<size_t>(field->parameter_count()), T(1));
        const int64_t nd = static_cast<int64_t>(n) * d;
        field->forward_backward(
            TensorView<const T>(x.data(), xs(b.B)), TensorView<const T>(t.data(), {b.B}),
            TensorView<T>(v.data(), xs(b.B)),
            [&](int64_t b0, int64_t rows) {
                for (int64_t k = b0 * nd; k < (b0 + rows) * nd; ++k)
                    dv[k] = static_cast<T>(w) * v[k] + gv[k];
            },
            TensorView<T>(dv.data(), xs(b.B)), TensorView<T>(gp.data(), {field->parameter_count()}),
            TensorView<T>(gx.data(), xs(b.B)), ws.get(*field, FieldOp::forward_backward, b.B));
        Fb r{std::vector<double>(v.begin(), v.end()), std::vector<double>(gp.begin(), gp.end()),
             std::vector<double>(gx.begin(), gx.end())};
        for (double& y : r.gp) y -= 1.0;
        return r;
    }
    // The same through forward, the output gradient of all rows, backward.
    Fb forward_then_backward(const Batch& b, double w, const std::vector<double>& g) {
        Fb r;
        r.v = forward(b);
        std::vector<double> dv(r.v.size());
        for (size_t k = 0; k < dv.size(); ++k)
            dv[k] = static_cast<double>(static_cast<T>(w) * static_cast<T>(r.v[k]) +
                                        static_cast<T>(g[k]));
        std::tie(r.gp, r.gx) = backward(b, dv);
        return r;
    }
    std::pair<std::vector<double>, std::vector<double>> divergence(const Batch& b) {
        const std::vector<T> x = cast<T>(b.x), t = cast<T>(b.t);
        std::vector<T> v(x.size()), div(static_cast<size_t>(b.B));
        field->divergence(TensorView<const T>(x.data(), xs(b.B)),
                          TensorView<const T>(t.data(), {b.B}), TensorView<T>(v.data(), xs(b.B)),
                          TensorView<T>(div.data(), {b.B}),
                          ws.get(*field, FieldOp::divergence, b.B));
        return {std::vector<double>(v.begin(), v.end()),
                std::vector<double>(div.begin(), div.end())};
    }
    std::vector<double> jvp_trace(const Batch& b, int K, const std::vector<double>& dirs) {
        const std::vector<T> x = cast<T>(b.x), t = cast<T>(b.t), e = cast<T>(dirs);
        std::vector<T> tr(static_cast<size_t>(b.B));
        field->jvp_trace(
            TensorView<const T>(x.data(), xs(b.B)), TensorView<const T>(t.data(), {b.B}),
            TensorView<const T>(e.data(), Shape{b.B, K, n, d}), {}, TensorView<T>(tr.data(), {b.B}),
            ws.get(*field, FieldOp::jvp_trace, b.B, K));
        return std::vector<double>(tr.begin(), tr.end());
    }
};

class EgnnFast_ : public ::testing::TestWithParam<Case> {};

TEST_P(EgnnFast_, ForwardMatchesReference) {
    const Case c = GetParam();
    const EgnnModel model = test::random_egnn_model(c, 7);
    const Batch b = make_batch(c, c.n > 20 ? 3 : 37, 41);
    Ops<double> ref(make_reference_field(model, 1));
    Ops<float> fast(make_fast_field(model, 1));
    const std::vector<double> v_ref = ref.forward(b);
    const double vscale = max_abs(v_ref);
    ASSERT_GT(vscale, 1e-3) << "the field is too small for the comparison to mean anything";
    EXPECT_ALL_CLOSE(fast.forward(b), v_ref, kFieldTol * (1 + vscale), kFieldTol) << c.name;
}

TEST_P(EgnnFast_, BackwardMatchesReference) {
    const Case c = GetParam();
    const EgnnModel model = test::random_egnn_model(c, 9);
    const Batch b = make_batch(c, c.n > 20 ? 2 : 19, 43);
    auto gen = test::rng(44);
    const std::vector<double> g = test::random_normal(b.x.size(), gen);
    Ops<double> ref(make_reference_field(model, 1));
    Ops<float> fast(make_fast_field(model, 1));
    const auto [gp_ref, gx_ref] = ref.backward(b, g);
    const auto [gp, gx] = fast.backward(b, g);
    EXPECT_ALL_CLOSE(gp, gp_ref, kGradTol * max_abs(gp_ref), kGradTol) << c.name;
    EXPECT_ALL_CLOSE(gx, gx_ref, kGradTol * max_abs(gx_ref), kGradTol) << c.name;
    EXPECT_TRUE(test::not_all_zero(gp));
}

TEST_P(EgnnFast_, DivergenceAndJvpTraceMatchReference) {
    const Case c = GetParam();
    const EgnnModel model = test::random_egnn_model(c, 11);
    Ops<double> ref(make_reference_field(model, 1));
    Ops<float> fast(make_fast_field(model, 1));
    // The double reference's exact LJ55 divergence takes seconds a sample: one sample there.
    const Batch b = make_batch(c, c.n > 20 ? 1 : 5, 45);
    const auto [v_ref, div_ref] = ref.divergence(b);
    const auto [v, div] = fast.divergence(b);
    const double vscale = max_abs(v_ref), dscale = max_abs(div_ref);
    EXPECT_ALL_CLOSE(v, v_ref, kFieldTol * (1 + vscale), kFieldTol) << c.name;
    EXPECT_ALL_CLOSE(div, div_ref, kDivTol * (1 + dscale), kDivTol) << c.name;
    EXPECT_TRUE(test::not_all_zero(div));

    // Hutchinson-style traces with 1 (the default probe count; fewer rows than layer 0's two
    // basis tangents) and 3 random (Gaussian, so no sign symmetry hides a bug) directions.
    for (const int K : {1, 3}) {
        const Batch bj = make_batch(c, c.n > 20 ? 2 : 6, 46);
        auto gen = test::rng(47);
        const std::vector<double> dirs = test::random_normal(bj.x.size() * K, gen);
        const std::vector<double> tr_ref = ref.jvp_trace(bj, K, dirs);
        EXPECT_ALL_CLOSE(fast.jvp_trace(bj, K, dirs), tr_ref, kDivTol * (1 + max_abs(tr_ref)),
                         kDivTol)
            << c.name << ", K " << K;
    }
}

// forward_backward runs each row's forward (with v), its output gradient and its backward from
// the same tape: the same operations as forward, then backward (which repeats the forward), so
// the same bits; and the interface's default (the reference) is forward then backward.
TEST_P(EgnnFast_, ForwardBackwardIsForwardThenBackwardBitForBit) {
    const Case c = GetParam();
    const EgnnModel model = test::random_egnn_model(c, 17);
    const Batch b = make_batch(c, c.n > 20 ? 3 : 21, 52);
    auto gen = test::rng(53);
    const std::vector<double> g = test::random_normal(b.x.size(), gen);
    Ops<float> fast(make_fast_field(model, 1));
    const auto fused = fast.forward_backward(b, 0.5, g);
    const auto plain = fast.forward_then_backward(b, 0.5, g);
    EXPECT_EQ(fused.v, plain.v) << c.name;
    EXPECT_EQ(fused.gp, plain.gp) << c.name;
    EXPECT_EQ(fused.gx, plain.gx) << c.name;
    EXPECT_TRUE(test::not_all_zero(fused.gp));
    if (c.n > 20) return;  // the reference takes long at LJ55 and aldp sizes
    Ops<double> ref(make_reference_field(model, 1));
    const auto rf = ref.forward_backward(b, 0.5, g);
    const auto rp = ref.forward_then_backward(b, 0.5, g);
    EXPECT_EQ(rf.v, rp.v) << c.name;
    EXPECT_EQ(rf.gp, rp.gp) << c.name;
    EXPECT_EQ(rf.gx, rp.gx) << c.name;
    EXPECT_ALL_CLOSE(fused.gp, rf.gp, kGradTol * max_abs(rf.gp), kGradTol) << c.name;
}

INSTANTIATE_TEST_SUITE_P(Sizes, EgnnFast_, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return std::string(info.param.name); });

// Every row is computed by one worker and the gradient is reduced over fixed chunks in order:
// 1, 2 and 3 threads give the same bits. B = 40 is three chunks, the last one partial.
TEST(EgnnFast, ResultsDoNotDependOnTheThreadCount) {
    const Case c{"lj13", 13, 3, 32, 3, true, true, false};
    const EgnnModel model = test::random_egnn_model(c, 13);
    const Batch b = make_batch(c, 40, 48);
    auto gen = test::rng(49);
    const std::vector<double> g = test::random_normal(b.x.size(), gen);
    Ops<float> one(make_fast_field(model, 1));
    const std::vector<double> v1 = one.forward(b);
    const auto [gp1, gx1] = one.backward(b, g);
    const auto [dv1, div1] = one.divergence(b);
    const auto fb1 = one.forward_backward(b, 0.5, g);
    for (int threads : {2, 3}) {
        Ops<float> many(make_fast_field(model, threads));
        EXPECT_EQ(many.forward(b), v1) << threads << " threads";
        const auto [gp, gx] = many.backward(b, g);
        EXPECT_EQ(gp, gp1) << threads << " threads";
        EXPECT_EQ(gx, gx1) << threads << " threads";
        const auto [dv, div] = many.divergence(b);
        EXPECT_EQ(div, div1) << threads << " threads";
        EXPECT_EQ(dv, dv1) << threads << " threads";
        const auto fb = many.forward_backward(b, 0.5, g);
        EXPECT_EQ(fb.v, fb1.v) << threads << " threads";
        EXPECT_EQ(fb.gp, fb1.gp) << threads << " threads";
        EXPECT_EQ(fb.gx, fb1.gx) << threads << " threads";
    }
}

// forward_backward checks its arguments once, like the other operations: a missing callback, a
// short workspace and a wrongly shaped dL_dv are refused before any work.
TEST(EgnnFast, ForwardBackwardChecksItsArguments) {
    const Case c{"dw4", 4, 2, 32, 3, true, true, false};
    auto field = make_fast_field(test::random_egnn_model(c, 21), 1);
    const int64_t B = 3;
    const Shape xs{B, c.n, c.d};
    std::vector<float> x(static_cast<size_t>(B * c.n * c.d), 0.5f), t(B, 0.5f), v(x.size()),
        dv(x.size()), gp(static_cast<size_t>(field->parameter_count()));
    FieldWorkspace ws;
    const auto call = [&](const OutputGradient& g, TensorView<unsigned char> w, Shape dvs) {
        field->forward_backward(
            TensorView<const float>(x.data(), xs), TensorView<const float>(t.data(), {B}),
            TensorView<float>(v.data(), xs), g, TensorView<float>(dv.data(), dvs),
            TensorView<float>(gp.data(), {field->parameter_count()}), {}, w);
    };
    const auto grad = [](int64_t, int64_t) {};
    const auto w = ws.get(*field, FieldOp::forward_backward, B);
    EXPECT_GE(static_cast<size_t>(w.numel()), field->workspace_bytes(FieldOp::backward, B));
    EXPECT_THROW(call(OutputGradient{}, w, xs), Error);
    EXPECT_THROW(call(grad, TensorView<unsigned char>(w.data, Shape{w.numel() - 1}), xs), Error);
    EXPECT_THROW(call(grad, w, Shape{B, c.n, c.d + 1}), Error);
    EXPECT_NO_THROW(call(grad, w, xs));
}

// A field that passes every operation to another one and so takes the interface's default
// forward_backward: forward, the output gradient of all rows, backward.
class PlainPath final : public Field<float> {
  public:
    explicit PlainPath(Field<float>& f)
        : Field<float>(f.n_particles(), f.dim(), f.parameter_count(), f.device()), f_(f) {}

  protected:
    TensorView<float> do_parameters() override { return f_.parameters(); }
    std::vector<double> do_parameters_to_host() const override { return f_.parameters_to_host(); }
    void do_set_parameters(const std::vector<double>& p) override { f_.set_parameters(p); }
    size_t do_workspace_bytes(FieldOp op, int64_t B, int K) const override {
        return f_.workspace_bytes(op, B, K);
    }
    void do_forward(TensorView<const float> x, TensorView<const float> t, TensorView<float> v,
                    TensorView<unsigned char> ws, Stream s) override {
        f_.forward(x, t, v, ws, s);
    }
    void do_backward(TensorView<const float> x, TensorView<const float> t,
                     TensorView<const float> g, TensorView<float> gp, TensorView<float> gx,
                     TensorView<unsigned char> ws, Stream s) override {
        f_.backward(x, t, g, gp, gx, ws, s);
    }
    void do_divergence(TensorView<const float> x, TensorView<const float> t, TensorView<float> v,
                       TensorView<float> div, TensorView<unsigned char> ws, Stream s) override {
        f_.divergence(x, t, v, div, ws, s);
    }
    void do_jvp_trace(TensorView<const float> x, TensorView<const float> t,
                      TensorView<const float> dirs, TensorView<float> v, TensorView<float> tr,
                      TensorView<unsigned char> ws, Stream s) override {
        f_.jvp_trace(x, t, dirs, v, tr, ws, s);
    }

  private:
    Field<float>& f_;
};

// The training step on the fast field (forward_backward, each row's backward from its forward's
// tape) and on the same field through the default path (forward, then backward) give the same
// losses, gradients and parameters, bit for bit, step after step (LJ13 sizes, 3 chunks of rows,
// 2 threads).
TEST(EgnnFast, TrainStepOnTheTapeIsTheForwardThenBackwardStep) {
    const Case c{"lj13", 13, 3, 32, 3, true, true, false};
    const EgnnModel model = test::random_egnn_model(c, 19);
    const int64_t count = 80, B = 40;
    const Batch data = make_batch(c, static_cast<int>(count), 54);
    FlowMatchingStepOptions o;
    o.objective = CouplingKind::fm;
    o.batch = B;
    o.draw_seed = 5;
    o.ema_decay = 0.9;
    auto fused_field = make_fast_field(model, 2), inner = make_fast_field(model, 2);
    PlainPath plain_field(*inner);
    FlowMatchingStep<float> fused(*fused_field, o, data.x.data(), count, data.x.data(), B);
    FlowMatchingStep<float> plain(plain_field, o, data.x.data(), count, data.x.data(), B);
    std::vector<int64_t> order(static_cast<size_t>(count));
    for (int64_t k = 0; k < count; ++k) order[static_cast<size_t>(k)] = (k * 7) % count;
    fused.set_order(order);
    plain.set_order(order);
    for (int64_t step = 0; step < 4; ++step) {
        fused.step(step, step % 2, 1e-3);
        plain.step(step, step % 2, 1e-3);
        const auto a = fused.snapshot(), b = plain.snapshot();
        EXPECT_EQ(a.loss, b.loss) << "step " << step;
        EXPECT_EQ(a.grad, b.grad) << "step " << step;
        EXPECT_TRUE(test::not_all_zero(a.grad));
    }
    EXPECT_EQ(fused_field->parameters_to_host(), inner->parameters_to_host());
    EXPECT_EQ(fused.validation_loss(3, B), plain.validation_loss(3, B));
}

// The optimiser writes parameters() in place; the next call must use the new values.
TEST(EgnnFast, SeesParametersWrittenInPlace) {
    const Case c{"dw4", 4, 2, 32, 3, true, true, false};
    EgnnModel model = test::random_egnn_model(c, 15);
    const Batch b = make_batch(c, 3, 50);
    Ops<float> fast(make_fast_field(model, 1));
    const std::vector<double> before = fast.forward(b);
    TensorView<float> p = fast.field->parameters();
    for (int64_t k = 0; k < p.numel(); ++k) p.data[k] *= 1.1f;
    for (double& w : model.params) w = static_cast<double>(static_cast<float>(w) * 1.1f);
    Ops<double> ref(make_reference_field(model, 1));
    const std::vector<double> v_ref = ref.forward(b), after = fast.forward(b);
    EXPECT_NE(after, before);
    EXPECT_ALL_CLOSE(after, v_ref, kFieldTol * (1 + max_abs(v_ref)), kFieldTol);
}

// A short training run (fm, DW4 sizes, 60 steps of 32 rows) on the fast field follows the same
// run on the double reference: same data, draws and schedule, so the losses differ only by the
// float32 rounding of the network, its gradient and Adam's state.
// Per step the losses agree to kTrainLossRtol: float rounding (~1e-6 relative per step) grows
// through 60 Adam updates but stays orders of magnitude below a wrong gradient, which changes
// the loss curve at the percent level within a few steps.
constexpr double kTrainLossRtol = 1e-3;

TEST(EgnnFast, ShortTrainingRunFollowsTheReference) {
    auto gen = test::rng(51);
    const int n = 4, d = 2, count = 80;
    std::vector<double> x;
    for (int r = 0; r < count; ++r) {
        auto xr = test::random_configuration(n, d, 1.5, 0.5, gen);
        for (int a = 0; a < d; ++a) {
            double mean = 0;
            for (int i = 0; i < n; ++i) mean += xr[i * d + a] / n;
            for (int i = 0; i < n; ++i) xr[i * d + a] -= mean;
        }
        x.insert(x.end(), xr.begin(), xr.end());
    }
    TrainOptions o;
    o.system = "dw4";
    o.objective = CouplingKind::fm;
    o.epochs = 30;
    o.batch = 32;
    o.lr = 2e-3;
    o.seed = 3;
    o.threads = 1;
    o.validation_fraction = 0.2;
    auto run = [&](bool reference) {
        TrainOptions r = o;
        r.reference = reference;
        std::vector<double> losses;
        r.progress = [&](int64_t, int64_t, double loss, double) { losses.push_back(loss); };
        const TrainResult res = train_flow_matching(r, x, count, n, d);
        losses.push_back(res.validation_loss);
        return losses;
    };
    const std::vector<double> ref = run(true), fast = run(false);
    ASSERT_EQ(fast.size(), ref.size());
    ASSERT_GE(ref.size(), 50u);
    EXPECT_ALL_CLOSE(fast, ref, 0.0, kTrainLossRtol);
    // Batch losses are noisy (u = x1 - x0 with random pairs): compare means of ten steps.
    double first = 0, last = 0;
    for (size_t k = 0; k < 10; ++k) {
        first += ref[k] / 10;
        last += ref[ref.size() - 11 + k] / 10;
    }
    EXPECT_LT(last, 0.95 * first) << "the run does not learn: a weak comparison";
}

}  // namespace
}  // namespace eqflow
