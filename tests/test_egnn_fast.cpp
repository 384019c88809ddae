// The fast CPU backend (float32, SIMD; src/cpu/egnn_field_fast.cpp) against the double CPU
// reference through the field interface: forward, backward, exact divergence and jvp_trace at
// the DW4, LJ13, LJ55 and alanine-dipeptide (typed) sizes plus odd ones, results independent of
// the thread count, and a short training run that follows the reference run.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "egnn_test_util.h"
#include "eqflow/egnn.h"
#include "eqflow/field.h"
#include "eqflow/tensor.h"
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

    // Hutchinson-style traces with 3 random (Gaussian, so no sign symmetry hides a bug) directions.
    const int K = 3;
    const Batch bj = make_batch(c, c.n > 20 ? 2 : 6, 46);
    auto gen = test::rng(47);
    const std::vector<double> dirs = test::random_normal(bj.x.size() * K, gen);
    const std::vector<double> tr_ref = ref.jvp_trace(bj, K, dirs);
    EXPECT_ALL_CLOSE(fast.jvp_trace(bj, K, dirs), tr_ref, kDivTol * (1 + max_abs(tr_ref)), kDivTol)
        << c.name;
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
    for (int threads : {2, 3}) {
        Ops<float> many(make_fast_field(model, threads));
        EXPECT_EQ(many.forward(b), v1) << threads << " threads";
        const auto [gp, gx] = many.backward(b, g);
        EXPECT_EQ(gp, gp1) << threads << " threads";
        EXPECT_EQ(gx, gx1) << threads << " threads";
        const auto [dv, div] = many.divergence(b);
        EXPECT_EQ(div, div1) << threads << " threads";
        EXPECT_EQ(dv, dv1) << threads << " threads";
    }
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
