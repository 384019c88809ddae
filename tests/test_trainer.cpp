// The flow-matching trainer (eqflow/trainer.h) and the optimiser (eqflow/optim.h): Adam against
// hand-computed steps, the loss gradient against finite differences, bit-for-bit resume,
// skipped non-finite steps, the stop flag, checkpoints and the log.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "eqflow/error.h"
#include "eqflow/flow.h"
#include "eqflow/json.h"
#include "eqflow/mcmc.h"
#include "eqflow/model_io.h"
#include "eqflow/optim.h"
#include "eqflow/systems.h"
#include "eqflow/trainer.h"
#include "test_util.h"
#include "train_test_util.h"

namespace eqflow {
namespace {

TEST(Adam, MatchesTheUpdateRuleByHand) {
    AdamState st;
    AdamOptions o;
    std::vector<double> p = {1.0, -2.0};
    const std::vector<double> g1 = {0.5, -4.0}, g2 = {-1.0, 2.0};
    adam_update(o, 0.1, 2, p.data(), g1.data(), st);
    // First step: m/(1-b1) = g, v/(1-b2) = g^2, so each parameter moves by lr * g / (|g| + eps).
    constexpr double kRound = 1e-12;  // a few roundings
    EXPECT_NEAR(p[0], 1.0 - 0.1 * 0.5 / (0.5 + 1e-8), kRound);
    EXPECT_NEAR(p[1], -2.0 + 0.1 * 4.0 / (4.0 + 1e-8), kRound);
    adam_update(o, 0.1, 2, p.data(), g2.data(), st);
    EXPECT_EQ(st.step, 2);
    for (int i = 0; i < 2; ++i) {
        const double m = 0.9 * 0.1 * g1[i] + 0.1 * g2[i];
        const double v = 0.999 * 0.001 * g1[i] * g1[i] + 0.001 * g2[i] * g2[i];
        const double mh = m / (1 - 0.81), vh = v / (1 - 0.999 * 0.999);
        const double p1 = (i == 0 ? 1.0 : -2.0) - 0.1 * g1[i] / (std::fabs(g1[i]) + 1e-8);
        EXPECT_NEAR(p[static_cast<size_t>(i)], p1 - 0.1 * mh / (std::sqrt(vh) + 1e-8), kRound) << i;
    }
    std::vector<double> shadow = {0.0, 0.0};
    ema_update(0.9, 2, p.data(), shadow.data());
    EXPECT_NEAR(shadow[0], 0.1 * p[0], kRound);
    EXPECT_EQ(scheduled_learning_rate(5e-4, 99, 100), 5e-4);
    EXPECT_NEAR(scheduled_learning_rate(5e-4, 100, 100), 5e-5, 1e-20);
}

EgnnModel tiny_model(int hidden = 8, int layers = 2) {
    EgnnModel m;
    m.config = default_egnn_config("dw4", 4, 2);
    m.config.hidden = hidden;
    m.config.layers = layers;
    m.params = egnn_init_parameters(m.config, test::seed());
    return m;
}

TEST(FlowMatchingLoss, GradientMatchesFiniteDifferences) {
    EgnnModel model = tiny_model();
    // Give the coordinate head weight so every parameter matters.
    auto gen = test::rng(11);
    std::uniform_real_distribution<double> u(-0.5, 0.5);
    for (double& p : model.params) p += 0.2 * u(gen);
    const int64_t B = 21, D = 8;  // not a multiple of the 16-row chunk
    std::vector<double> x0 = test::random_normal(B * D, gen),
                        x1 = test::random_normal(B * D, gen, 2.0),
                        eps = test::random_normal(B * D, gen), t(B);
    remove_mean(B, 4, 2, x0.data());
    remove_mean(B, 4, 2, x1.data());
    remove_mean(B, 4, 2, eps.data());
    for (double& v : t) v = 0.5 + u(gen);
    std::vector<double> grad(model.params.size());
    const double loss = flow_matching_loss(model, B, x0.data(), x1.data(), t.data(), eps.data(),
                                           0.1, grad.data(), 1);
    EXPECT_GT(loss, 0.0);
    // The thread count does not change a bit.
    std::vector<double> grad2(model.params.size());
    EXPECT_EQ(loss, flow_matching_loss(model, B, x0.data(), x1.data(), t.data(), eps.data(), 0.1,
                                       grad2.data(), 2));
    for (size_t i = 0; i < grad.size(); ++i) ASSERT_EQ(grad[i], grad2[i]);
    EXPECT_TRUE(test::not_all_zero(grad));
    // Central differences with h = 1e-5: truncation ~h^2 * |f'''|, rounding ~1e-16 / h.
    constexpr double kH = 1e-5, kAtol = 1e-7, kRtol = 1e-5;
    std::vector<double> fd, an;
    for (size_t i = 0; i < model.params.size(); i += 7) {
        EgnnModel mp = model, mm = model;
        mp.params[i] += kH;
        mm.params[i] -= kH;
        const double lp =
            flow_matching_loss(mp, B, x0.data(), x1.data(), t.data(), eps.data(), 0.1, nullptr, 1);
        const double lm =
            flow_matching_loss(mm, B, x0.data(), x1.data(), t.data(), eps.data(), 0.1, nullptr, 1);
        fd.push_back((lp - lm) / (2 * kH));
        an.push_back(grad[i]);
    }
    EXPECT_ALL_CLOSE(an, fd, kAtol, kRtol);
}

class Trainer : public ::testing::Test {
  protected:
    std::string dir_ = test::temp_path("trainer");
    void TearDown() override { std::system(("rm -rf " + dir_).c_str()); }

    TrainOptions tiny(const std::string& sub) const {
        TrainOptions o = test::tiny_dw4_options();
        o.out_dir = dir_ + "/" + sub;
        return o;
    }
    // The tiny run with another objective, in memory only (no output directory).
    TrainOptions tiny_in_memory(CouplingKind objective) const {
        TrainOptions o = test::tiny_dw4_options();
        o.objective = objective;
        return o;
    }
};

TEST_F(Trainer, ResumeIsBitForBit) {
    const std::vector<double> x = test::dw4_data(72, 1);
    const TrainOptions straight = tiny("straight");
    const TrainResult a = train_flow_matching(straight, x, 72, 4, 2);
    ASSERT_EQ(a.total_steps, 2000);
    ASSERT_EQ(a.step, 2000);
    EXPECT_EQ(a.train_count, 65);  // 10% of 72 rounds to 7 held out
    EXPECT_EQ(a.validation_count, 7);
    EXPECT_FALSE(a.interrupted);

    TrainOptions first = tiny("resumed");
    first.stop_after_steps = 1000;
    const TrainResult b1 = train_flow_matching(first, x, 72, 4, 2);
    EXPECT_TRUE(b1.interrupted);
    EXPECT_EQ(b1.step, 1000);
    TrainOptions second = tiny("resumed");
    second.resume = true;
    second.threads = 2;  // the thread count is free to change
    const TrainResult b = train_flow_matching(second, x, 72, 4, 2);
    EXPECT_EQ(b.step, 2000);
    ASSERT_EQ(a.raw_model.params.size(), b.raw_model.params.size());
    size_t differ = 0;
    for (size_t i = 0; i < a.raw_model.params.size(); ++i)
        differ += a.raw_model.params[i] != b.raw_model.params[i];
    EXPECT_EQ(differ, 0u) << "parameters differ after resume";
    for (size_t i = 0; i < a.model.params.size(); ++i)
        ASSERT_EQ(a.model.params[i], b.model.params[i]) << "EMA " << i;
    EXPECT_EQ(a.validation_loss, b.validation_loss);
    std::printf("after 2000 steps: validation loss %.5f (straight and resumed)\n",
                a.validation_loss);

    // The saved model is the EMA model, bit for bit (F64 files).
    const EgnnModel saved = load_model(straight.out_dir + "/model.safetensors");
    for (size_t i = 0; i < saved.params.size(); ++i) ASSERT_EQ(saved.params[i], a.model.params[i]);
    // The log is JSON lines with step, loss, lr, time, and one validation line per epoch.
    std::ifstream log(straight.out_dir + "/train_log.jsonl");
    std::string line;
    int steps = 0, epochs = 0;
    double lr_first = 0, lr_last = 0;
    while (std::getline(log, line)) {
        const Json j = Json::parse(line);
        if (j.contains("val_loss")) {
            ++epochs;
        } else {
            ++steps;
            EXPECT_TRUE(j.contains("loss") && j.contains("time") && j.contains("step"));
            (steps == 1 ? lr_first : lr_last) = j.at("lr").as_number();
        }
    }
    EXPECT_EQ(steps, 20);
    EXPECT_EQ(epochs, 250);
    EXPECT_EQ(lr_first, 5e-4);
    EXPECT_NEAR(lr_last, 5e-5, 1e-20);  // dropped at half the steps
}

TEST_F(Trainer, ResumeRefusesChangedOptionsOrData) {
    const std::vector<double> x = test::dw4_data(24, 2);
    TrainOptions o = tiny("run");
    o.epochs = 2;
    o.stop_after_steps = 1;
    train_flow_matching(o, x, 24, 4, 2);
    o.stop_after_steps = 0;
    o.resume = true;
    TrainOptions changed = o;
    changed.lr = 1e-3;
    EXPECT_THROW(train_flow_matching(changed, x, 24, 4, 2), Error);
    changed = o;
    changed.time_power = 2.0;  // recorded only when set: refused both ways (the CLI test)
    EXPECT_THROW(train_flow_matching(changed, x, 24, 4, 2), Error);
    std::vector<double> other = x;
    other[0] += 1e-9;
    EXPECT_THROW(train_flow_matching(o, other, 24, 4, 2), Error);
    TrainOptions missing = o;
    missing.out_dir = dir_ + "/nothing-here";
    EXPECT_THROW(train_flow_matching(missing, x, 24, 4, 2), Error);
    EXPECT_EQ(train_flow_matching(o, x, 24, 4, 2).step, o.epochs * 2);
}

TEST_F(Trainer, TimePowerMustBePositiveAndFinite) {
    const std::vector<double> x = test::dw4_data(24, 3);
    for (const double bad : {0.0, -2.0, std::numeric_limits<double>::quiet_NaN(),
                             std::numeric_limits<double>::infinity()}) {
        TrainOptions o = tiny_in_memory(CouplingKind::fm);
        o.time_power = bad;
        EXPECT_THROW(train_flow_matching(o, x, 24, 4, 2), Error) << bad;
    }
    TrainOptions lik = tiny_in_memory(CouplingKind::fm);
    lik.likelihood = true;  // draws no t
    lik.time_power = 2.0;
    EXPECT_THROW(train_flow_matching(lik, x, 24, 4, 2), Error);
}

TEST_F(Trainer, NonFiniteStepsAreSkippedAndCounted) {
    const std::vector<double> x = test::dw4_data(24, 3);
    TrainOptions o = tiny_in_memory(CouplingKind::fm);
    o.epochs = 2;
    o.sigma = std::numeric_limits<double>::infinity();  // x_t is never finite
    o.reference = true;  // the double field: the parameters compare exactly with the initial ones
    const TrainResult r = train_flow_matching(o, x, 24, 4, 2);
    EXPECT_EQ(r.skipped, r.total_steps);
    EXPECT_GT(r.total_steps, 0);
    const std::vector<double> p0 = egnn_init_parameters(r.raw_model.egnn_config, o.seed);
    for (size_t i = 0; i < p0.size(); ++i) ASSERT_EQ(r.raw_model.params[i], p0[i]);
}

// progress is called after every step, or with progress_interval only after the first step, the
// last one and steps that interval after the previous call (the command line's 0.1 s: on the
// GPU each call waits for the device); the run itself does not change.
TEST_F(Trainer, ProgressIntervalThinsTheCallsNotTheRun) {
    const std::vector<double> x = test::dw4_data(24, 3);
    TrainOptions o = tiny_in_memory(CouplingKind::fm);
    o.epochs = 4;
    std::vector<int64_t> every, thinned;
    std::vector<double> every_loss, thinned_loss;
    o.progress = [&](int64_t step, int64_t, double loss, double) {
        every.push_back(step);
        every_loss.push_back(loss);
    };
    const TrainResult a = train_flow_matching(o, x, 24, 4, 2);
    ASSERT_GT(a.total_steps, 3);
    ASSERT_EQ(static_cast<int64_t>(every.size()), a.total_steps);
    o.progress_interval = 3600.0;
    o.progress = [&](int64_t step, int64_t, double loss, double) {
        thinned.push_back(step);
        thinned_loss.push_back(loss);
    };
    const TrainResult b = train_flow_matching(o, x, 24, 4, 2);
    EXPECT_EQ(thinned, (std::vector<int64_t>{1, b.total_steps}));
    ASSERT_EQ(thinned_loss.size(), 2u);
    EXPECT_EQ(thinned_loss[0], every_loss.front());  // the loss of the step it reports
    EXPECT_EQ(thinned_loss[1], every_loss.back());
    EXPECT_EQ(b.model.params, a.model.params);
}

TEST_F(Trainer, StopFlagCheckpointsAndResumes) {
    const std::vector<double> x = test::dw4_data(40, 4);
    TrainOptions o = tiny("stop");
    o.objective = CouplingKind::ot;
    o.epochs = 3;
    o.ema_decay = 0.0;
    std::atomic<bool> stop{false};
    o.stop = &stop;
    o.progress = [&](int64_t step, int64_t, double, double) {
        if (step == 5) stop.store(true);
    };
    const TrainResult r = train_flow_matching(o, x, 40, 4, 2);
    EXPECT_TRUE(r.interrupted);
    EXPECT_EQ(r.step, 5);
    const SafetensorsFile ck = read_safetensors(o.out_dir + "/checkpoint.safetensors");
    // (SafetensorsFile::at / find are not exported from the library: look the tensors up by hand.)
    bool has_state = false, has_adam = false;
    for (const SafeTensor& t : ck.tensors) {
        if (t.name == "trainer.state") {
            has_state = true;
            EXPECT_EQ(t.ints.at(0), 5);
        }
        has_adam = has_adam || t.name == "optimizer.adam.m";
    }
    EXPECT_TRUE(has_state && has_adam);
    stop.store(false);
    o.resume = true;
    o.progress = nullptr;
    const TrainResult rest = train_flow_matching(o, x, 40, 4, 2);
    TrainOptions straight = tiny("stop-straight");
    straight.objective = CouplingKind::ot;
    straight.epochs = 3;
    straight.ema_decay = 0.0;
    const TrainResult s = train_flow_matching(straight, x, 40, 4, 2);
    for (size_t i = 0; i < s.model.params.size(); ++i)
        ASSERT_EQ(s.model.params[i], rest.model.params[i]);
}

TEST_F(Trainer, LossFallsOnDw4) {
    // A short run must learn something: the validation loss drops well below the untrained one.
    const std::vector<double> x = test::dw4_data(400, 5);
    TrainOptions o = tiny_in_memory(CouplingKind::ot);
    o.hidden = 16;
    o.layers = 2;
    o.batch = 64;
    o.lr = 5e-3;
    o.ema_decay = 0.0;
    std::vector<double> val;
    o.on_epoch = [&](int64_t, double v) { val.push_back(v); };
    TrainOptions untrained = o;
    untrained.epochs = 1;
    untrained.lr = 1e-300;  // effectively no update
    const TrainResult r0 = train_flow_matching(untrained, x, 400, 4, 2);
    o.epochs = 15;
    val.clear();
    const TrainResult r = train_flow_matching(o, x, 400, 4, 2);
    std::printf("validation loss: untrained %.4f, after %lld steps %.4f\n", r0.validation_loss,
                static_cast<long long>(r.step), r.validation_loss);
    // Untrained the field is ~0 and the loss is E|x1 - x0|^2 / (n d) (about 3 for DW4 with OT);
    // a trained field explains a good part of it.
    EXPECT_LT(r.validation_loss, 0.8 * r0.validation_loss);
}

}  // namespace
}  // namespace eqflow
