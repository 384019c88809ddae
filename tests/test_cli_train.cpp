// The flow commands of the CLI: eqflow train / sample / eval / demo (help, errors, outputs,
// --resume, Ctrl-C).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "cli_test_util.h"
#include "eqflow/device.h"
#include "eqflow/io.h"
#include "eqflow/json.h"
#include "eqflow/model_io.h"
#include "eqflow/npy.h"
#include "test_util.h"

namespace eqflow {
namespace {

using test::exists;
using test::Result;
using test::run;
using test::sh;
class CliTrain : public ::testing::Test {
  protected:
    static std::string dir_;
    static void SetUpTestSuite() {
        dir_ = test::temp_path("cli_train");
        ::mkdir(dir_.c_str(), 0755);
        const Result r =
            run("data --system dw4 --samples 80 --seed 5 --burn-in 200 --threads 1 --out " +
                file("train.npy"));
        ASSERT_EQ(r.code, 0) << r.out;
        const Result t =
            run("data --system dw4 --samples 30 --seed 6 --burn-in 200 --threads 1 --out " +
                file("test.npy"));
        ASSERT_EQ(t.code, 0) << t.out;
    }
    static void TearDownTestSuite() { std::system(("rm -rf " + dir_).c_str()); }
    static std::string file(const std::string& name) { return dir_ + "/" + name; }
    static std::string tiny_train(const std::string& run_dir,
                                  const std::string& objective = "eqot") {
        return "train --system dw4 --data " + file("train.npy") + " --objective " + objective +
               " --out " + file(run_dir) +
               " --epochs 3 --batch 16 --hidden 8 --layers 1 --threads 1 --seed 3";
    }
};
std::string CliTrain::dir_;

TEST_F(CliTrain, HelpAndErrors) {
    for (const char* cmd : {"train", "sample", "eval", "demo"}) {
        const Result r = run(std::string(cmd) + " --help");
        EXPECT_EQ(r.code, 0) << cmd;
        EXPECT_NE(r.out.find("usage: eqflow " + std::string(cmd)), std::string::npos) << r.out;
    }
    const Result help = run("--help");
    for (const char* cmd : {"train", "sample", "eval", "demo"})
        EXPECT_NE(help.out.find(cmd), std::string::npos);
    Result r{0, ""};
    if (!cuda_available()) {
        // --device cuda without a usable GPU: one line saying why, exit 1, nothing written.
        r = run(tiny_train("cuda-run") + " --device cuda");
        EXPECT_EQ(r.code, 1) << r.out;
        EXPECT_NE(r.out.find("--device cuda"), std::string::npos) << r.out;
        EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
        EXPECT_FALSE(exists(file("cuda-run")));
    }
    r = run(tiny_train("bad") + " --bogus 1");
    EXPECT_EQ(r.code, 2) << r.out;
    r = run("train --system dw4 --data " + file("train.npy") + " --objective sinkhorn --out " +
            file("bad"));
    EXPECT_EQ(r.code, 2) << r.out;
    r = run("train --system lj13 --data " + file("train.npy") + " --objective fm --out " +
            file("bad"));
    EXPECT_EQ(r.code, 1) << r.out;  // wrong shape for the system
    r = run("eval --model " + file("missing.safetensors") + " --test " + file("test.npy") +
            " --out " + file("m.json"));
    EXPECT_EQ(r.code, 1) << r.out;
    EXPECT_FALSE(exists(file("m.json")));
}

TEST_F(CliTrain, TrainSampleEval) {
    Result r = run(tiny_train("run"));
    ASSERT_EQ(r.code, 0) << r.out;
    for (const char* f :
         {"run/model.safetensors", "run/checkpoint.safetensors", "run/train_log.jsonl"})
        EXPECT_TRUE(exists(file(f))) << f;

    r = run("sample --model " + file("run/model.safetensors") + " --samples 20 --out-dir " +
            file("s") + " --threads 1 --batch 8");
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_EQ(read_npy(file("s/x.npy")).shape, (Shape{20, 8}));
    const NpyArray log_w = read_npy(file("s/log_w.npy"));
    ASSERT_EQ(log_w.shape, (Shape{20}));
    for (double w : log_w.values) EXPECT_FALSE(std::isnan(w));
    const Json summary = Json::parse(read_file(file("s/summary.json")));
    EXPECT_GE(summary.at("ess").as_number(), 0.0);
    EXPECT_LE(summary.at("ess").as_number(), 1.0);
    EXPECT_FALSE(summary.at("approximate").as_bool());

    // Hutchinson: the output says the weights are approximate.
    r = run("sample --model " + file("run/model.safetensors") + " --samples 4 --out-dir " +
            file("sh") + " --threads 1 --hutchinson 2");
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("APPROXIMATE"), std::string::npos) << r.out;

    r = run("eval --model " + file("run/model.safetensors") + " --test " + file("test.npy") +
            " --out " + file("metrics.json") + " --samples 16 --test-max 10 --threads 1");
    ASSERT_EQ(r.code, 0) << r.out;
    const Json m = Json::parse(read_file(file("metrics.json")));
    for (const char* key : {"nll", "nll_normalized", "ess", "path_length", "n_samples", "n_test",
                            "energy_mean_samples", "energy_mean_reweighted", "energy_mean_test",
                            "figure_energy_histogram"})
        EXPECT_TRUE(m.contains(key)) << key;
    EXPECT_EQ(m.at("n_samples").as_int(), 16);
    EXPECT_EQ(m.at("n_test").as_int(), 10);
    // nll_normalized - nll = 1/2 (n-1) d log(2 pi) = 3 log(2 pi) for DW4.
    EXPECT_NEAR(m.at("nll_normalized").as_number() - m.at("nll").as_number(),
                3.0 * std::log(2.0 * M_PI), 1e-9);
    EXPECT_TRUE(exists(m.at("figure_energy_histogram").as_string()));
    EXPECT_NE(r.out.find("NLL"), std::string::npos);
}

TEST_F(CliTrain, ResumeMatchesStraightRun) {
    Result r = run(tiny_train("straight", "ot"));
    ASSERT_EQ(r.code, 0) << r.out;
    r = run(tiny_train("parts", "ot") + " --stop-after 5");
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("--resume"), std::string::npos) << r.out;
    r = run(tiny_train("parts", "ot") + " --resume");
    ASSERT_EQ(r.code, 0) << r.out;
    // The resumed process has no validation loss before its first epoch ends: its progress
    // lines say "val -" until then, never nan.
    EXPECT_NE(r.out.find("val -"), std::string::npos) << r.out;
    EXPECT_EQ(r.out.find("nan"), std::string::npos) << r.out;
    const EgnnModel a = load_model(file("straight/model.safetensors"));
    const EgnnModel b = load_model(file("parts/model.safetensors"));
    ASSERT_EQ(a.params.size(), b.params.size());
    for (size_t i = 0; i < a.params.size(); ++i) ASSERT_EQ(a.params[i], b.params[i]) << i;
    // Resuming with other options is refused.
    r = run(tiny_train("parts", "ot") + " --resume --lr 1e-3");
    EXPECT_EQ(r.code, 1) << r.out;
}

TEST_F(CliTrain, EqotStartsReachTheCoupling) {
    // --eqot-starts K: the eqot search of each pair from its K best-scored principal-axes starts
    // (LJ13: 4 proper starts). K 4 is every start, the default search, so the same model bit for
    // bit; K 1 couples differently, so the model differs. Recorded, so a resume must repeat it.
    Result r = run("data --system lj13 --samples 40 --seed 5 --burn-in 200 --threads 1 --out " +
                   file("lj13.npy"));
    ASSERT_EQ(r.code, 0) << r.out;
    const auto train = [&](const std::string& out, const std::string& extra) {
        return run("train --system lj13 --data " + file("lj13.npy") +
                   " --objective eqot --epochs 2 --batch 16 --hidden 8 --layers 1 --threads 1 "
                   "--seed 3 --out " +
                   file(out) + extra);
    };
    for (const auto& [dir, extra] : {std::pair<std::string, std::string>{"all", ""},
                                     {"four", " --eqot-starts 4"},
                                     {"one", " --eqot-starts 1"}}) {
        r = train(dir, extra);
        ASSERT_EQ(r.code, 0) << r.out;
    }
    const EgnnModel all = load_model(file("all/model.safetensors"));
    const EgnnModel four = load_model(file("four/model.safetensors"));
    const EgnnModel one = load_model(file("one/model.safetensors"));
    EXPECT_EQ(four.params, all.params);
    EXPECT_NE(one.params, all.params);
    r = train("one", " --resume");  // without the option it was trained with
    EXPECT_EQ(r.code, 1) << r.out;
    EXPECT_NE(r.out.find("eqot_starts"), std::string::npos) << r.out;
    r = train("one", " --resume --eqot-starts 1");
    EXPECT_EQ(r.code, 0) << r.out;
    for (const char* bad : {" --eqot-starts 9", " --eqot-starts -1"}) {
        r = train("bad", bad);
        EXPECT_EQ(r.code, 2) << bad << r.out;
    }
    r = run(tiny_train("bad", "ot") + " --eqot-starts 1");
    EXPECT_EQ(r.code, 2) << r.out;
    EXPECT_NE(r.out.find("--objective eqot only"), std::string::npos) << r.out;
    r = run(tiny_train("bad", "eqot") + " --eqot-starts 1");  // DW4: the exact 2D alignment
    EXPECT_EQ(r.code, 1) << r.out;
    EXPECT_NE(r.out.find("has no starts"), std::string::npos) << r.out;
}

TEST_F(CliTrain, TimePowerReachesTheDraws) {
    // --time-power A: t = u^(1/A). A 1 is the default draw, so the same model bit for bit; A 2
    // trains on other times, so the model differs. Recorded, so a resume must repeat it.
    Result r;
    for (const auto& [dir, extra] : {std::pair<std::string, std::string>{"tp-default", ""},
                                     {"tp-one", " --time-power 1"},
                                     {"tp-two", " --time-power 2"}}) {
        r = run(tiny_train(dir, "ot") + extra);
        ASSERT_EQ(r.code, 0) << r.out;
    }
    const EgnnModel base = load_model(file("tp-default/model.safetensors"));
    EXPECT_EQ(load_model(file("tp-one/model.safetensors")).params, base.params);
    EXPECT_NE(load_model(file("tp-two/model.safetensors")).params, base.params);
    r = run(tiny_train("tp-two", "ot") + " --resume");  // without the option it was trained with
    EXPECT_EQ(r.code, 1) << r.out;
    EXPECT_NE(r.out.find("time_power"), std::string::npos) << r.out;
    r = run(tiny_train("tp-two", "ot") + " --resume --time-power 3");
    EXPECT_EQ(r.code, 1) << r.out;
    r = run(tiny_train("tp-two", "ot") + " --resume --time-power 2");
    EXPECT_EQ(r.code, 0) << r.out;
    for (const char* bad :
         {" --time-power 0", " --time-power -1", " --time-power nan", " --time-power 101"}) {
        r = run(tiny_train("tp-bad", "ot") + bad);
        EXPECT_EQ(r.code, 2) << bad << r.out;
    }
    r = run(tiny_train("tp-bad", "likelihood") + " --ode-steps 1 --time-power 2");
    EXPECT_EQ(r.code, 2) << r.out;
    EXPECT_NE(r.out.find("flow matching"), std::string::npos) << r.out;
}

TEST_F(CliTrain, CtrlCSavesACheckpoint) {
    // A run far too long to finish; SIGINT after a second must checkpoint and exit with 130.
    const std::string cmd = std::string(EQFLOW_CLI_PATH) + " train --system dw4 --data " +
                            file("train.npy") + " --objective fm --out " + file("long") +
                            " --epochs 1000000 --batch 16 --hidden 8 --layers 1 --threads 1 > " +
                            file("long.log") +
                            " 2>&1 & pid=$!; sleep 1.5; kill -INT $pid; wait $pid; echo rc=$?";
    const Result r = sh(cmd);
    EXPECT_NE(r.out.find("rc=130"), std::string::npos) << r.out << read_file(file("long.log"));
    EXPECT_TRUE(exists(file("long/checkpoint.safetensors")));
    EXPECT_TRUE(exists(file("long/model.safetensors")));
    EXPECT_NE(read_file(file("long.log")).find("--resume"), std::string::npos);
}

// --objective likelihood: trains the EGNN on the fast float field (--reference: the double one)
// through --ode-steps RK4 steps, resumes exactly (nothing is drawn), and its model is an ordinary
// model that eval scores. The options that do not fit are usage errors.
TEST_F(CliTrain, LikelihoodTrainResumeEval) {
    const std::string lik = tiny_train("lik", "likelihood") + " --ode-steps 2";
    Result r = run(lik);
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("fast float32 CPU field"), std::string::npos) << r.out;
    r = run(tiny_train("lik-ref", "likelihood") + " --ode-steps 2 --reference");
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("double CPU reference"), std::string::npos) << r.out;
    const std::string log = read_file(file("lik/train_log.jsonl"));
    EXPECT_NE(log.find("\"val_loss\""), std::string::npos) << log;

    r = run(tiny_train("lik-parts", "likelihood") + " --ode-steps 2 --stop-after 3");
    ASSERT_EQ(r.code, 0) << r.out;
    r = run(tiny_train("lik-parts", "likelihood") + " --ode-steps 2 --resume");
    ASSERT_EQ(r.code, 0) << r.out;
    const EgnnModel a = load_model(file("lik/model.safetensors"));
    const EgnnModel b = load_model(file("lik-parts/model.safetensors"));
    ASSERT_EQ(a.params.size(), b.params.size());
    for (size_t i = 0; i < a.params.size(); ++i) ASSERT_EQ(a.params[i], b.params[i]) << i;
    // Another ODE step count is another run.
    r = run(tiny_train("lik-parts", "likelihood") + " --ode-steps 3 --resume");
    EXPECT_EQ(r.code, 1) << r.out;

    r = run("eval --model " + file("lik/model.safetensors") + " --test " + file("test.npy") +
            " --out " + file("lik-metrics.json") + " --samples 16 --test-max 10 --threads 1");
    ASSERT_EQ(r.code, 0) << r.out;
    const Json m = Json::parse(read_file(file("lik-metrics.json")));
    EXPECT_TRUE(std::isfinite(m.at("nll").as_number()));
    EXPECT_EQ(m.at("n_test").as_int(), 10);

    r = run(tiny_train("lik-cuda", "likelihood") + " --device cuda");
    EXPECT_EQ(r.code, 2) << r.out;
    EXPECT_NE(r.out.find("not built"), std::string::npos) << r.out;
    EXPECT_FALSE(exists(file("lik-cuda")));
    r = run(tiny_train("lik-bad", "likelihood") + " --ode-steps 0");
    EXPECT_EQ(r.code, 2) << r.out;
    r = run(tiny_train("fm-bad", "fm") + " --ode-steps 4");
    EXPECT_EQ(r.code, 2) << r.out;
}

}  // namespace
}  // namespace eqflow
