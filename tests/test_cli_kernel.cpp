// The command line with the kernel-dynamics field: eqflow train --field kernel (fm, ot, eqot),
// and sample / eval / field on the model file it writes, as on an EGNN's; --device cuda and auto
// for it (the CUDA field itself is tests/test_kernel_field_gpu.cpp's); the option errors.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "cli_test_util.h"
#include "eqflow/device.h"
#include "eqflow/field.h"
#include "eqflow/flow_model.h"
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

// The fast field (float32) against the double reference, relative to the output's scale: see
// kFloatRtol in test_kernel_dynamics.cpp.
constexpr double kFloatRtol = 2e-5;

class CliKernel : public ::testing::Test {
  protected:
    static std::string dir_;
    static void SetUpTestSuite() {
        dir_ = test::temp_path("cli_kernel");
        ::mkdir(dir_.c_str(), 0755);
        const Result r =
            run("data --system dw4 --samples 240 --seed 5 --burn-in 200 --threads 1 --out " +
                file("train.npy"));
        ASSERT_EQ(r.code, 0) << r.out;
        const Result t =
            run("data --system dw4 --samples 30 --seed 6 --burn-in 200 --threads 1 --out " +
                file("test.npy"));
        ASSERT_EQ(t.code, 0) << t.out;
    }
    static void TearDownTestSuite() { std::system(("rm -rf " + dir_).c_str()); }
    static std::string file(const std::string& name) { return dir_ + "/" + name; }
    static std::string train(const std::string& run_dir, const std::string& objective, int epochs) {
        return "train --system dw4 --field kernel --data " + file("train.npy") + " --objective " +
               objective + " --out " + file(run_dir) + " --epochs " + std::to_string(epochs) +
               " --batch 24 --lr 0.01 --log-every 1 --threads 1 --seed 3";
    }
};
std::string CliKernel::dir_;

// The "loss" of every step line of a training log, in order.
std::vector<double> logged_losses(const std::string& path) {
    std::ifstream f(path);
    std::vector<double> losses;
    std::string line;
    while (std::getline(f, line)) {
        const Json j = Json::parse(line);
        if (j.contains("loss")) losses.push_back(j.at("loss").as_number());
    }
    return losses;
}

double mean(const std::vector<double>& v, size_t begin, size_t end) {
    double s = 0.0;
    for (size_t i = begin; i < end; ++i) s += v[i];
    return s / static_cast<double>(end - begin);
}

TEST_F(CliKernel, TrainFmLowersTheLossAndTheModelSamplesEvaluatesAndEvaluatesItsField) {
    const Result r = run(train("fm", "fm", 8));
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("kernel field"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("device: cpu"), std::string::npos) << r.out;
    ASSERT_TRUE(exists(file("fm/model.safetensors")));
    EXPECT_EQ(read_safetensors(file("fm/model.safetensors")).meta("eqflow.format"),
              "kernel-dynamics-v1");

    // 216 training samples / batch 24 = 9 steps an epoch, 72 steps. Independent pairs make a
    // noisy loss: compare the means of the first and the last 12 steps.
    const std::vector<double> losses = logged_losses(file("fm/train_log.jsonl"));
    ASSERT_EQ(losses.size(), 72u);
    const double early = mean(losses, 0, 12),
                 late = mean(losses, losses.size() - 12, losses.size());
    EXPECT_LT(late, 0.8 * early) << "first steps " << early << ", last steps " << late;

    // eval: the usual metrics, finite.
    const Result e =
        run("eval --model " + file("fm/model.safetensors") + " --test " + file("test.npy") +
            " --samples 60 --threads 1 --out " + file("fm/metrics.json"));
    ASSERT_EQ(e.code, 0) << e.out;
    const Json m = Json::parse(read_file(file("fm/metrics.json")));
    EXPECT_TRUE(std::isfinite(m.at("nll").as_number()));
    EXPECT_GE(m.at("ess").as_number(), 0.0);
    EXPECT_LE(m.at("ess").as_number(), 1.0);
    EXPECT_GT(m.at("path_length").as_number(), 0.0);
    EXPECT_EQ(m.at("failed_samples").as_int(), 0);
    EXPECT_EQ(m.at("n_test").as_int(), 30);

    // sample
    const Result s = run("sample --model " + file("fm/model.safetensors") +
                         " --samples 20 --threads 1 --out-dir " + file("fm/samples"));
    ASSERT_EQ(s.code, 0) << s.out;
    EXPECT_TRUE(exists(file("fm/samples/x.npy")));
    EXPECT_TRUE(exists(file("fm/samples/log_w.npy")));

    // field: v and the closed-form divergence, against the library's fields.
    for (bool reference : {true, false}) {
        const std::string v_out = file(reference ? "v_ref.npy" : "v.npy");
        const std::string d_out = file(reference ? "div_ref.npy" : "div.npy");
        const Result f = run("field --model " + file("fm/model.safetensors") + " --in " +
                             file("test.npy") + " --t 0.4 --out " + v_out + " --div-out " + d_out +
                             (reference ? " --reference" : " --device cpu"));
        ASSERT_EQ(f.code, 0) << f.out;
        EXPECT_NE(f.out.find("kernel field"), std::string::npos) << f.out;
        const FlowModel model = load_flow_model(file("fm/model.safetensors"));
        const int64_t N = 30;
        int64_t count = 0;
        const std::vector<double> x = load_configurations(file("test.npy"), 4, 2, &count, true);
        ASSERT_EQ(count, N);
        auto field = make_reference_field(model, 1);
        std::vector<double> t(static_cast<size_t>(N), 0.4), v(x.size()),
            div(static_cast<size_t>(N));
        FieldWorkspace ws;
        field->divergence(TensorView<const double>(x.data(), Shape{N, 4, 2}),
                          TensorView<const double>(t.data(), Shape{N}),
                          TensorView<double>(v.data(), Shape{N, 4, 2}),
                          TensorView<double>(div.data(), Shape{N}),
                          ws.get(*field, FieldOp::divergence, N));
        const NpyArray va = read_npy(v_out), da = read_npy(d_out);
        ASSERT_EQ(va.values.size(), v.size());
        ASSERT_EQ(da.values.size(), div.size());
        double vmax = 0.0, dmax = 0.0;
        for (double a : v) vmax = std::max(vmax, std::fabs(a));
        for (double a : div) dmax = std::max(dmax, std::fabs(a));
        // The reference is this computation (same rows, same order): to rounding. The fast one
        // is float32.
        const double rtol = reference ? 1e-12 : kFloatRtol;
        EXPECT_TRUE(test::all_close(va.values, v, rtol * vmax, rtol));
        EXPECT_TRUE(test::all_close(da.values, div, rtol * dmax, rtol));
    }
}

TEST_F(CliKernel, OtAndEqotCouplingsTrain) {
    for (const char* objective : {"ot", "eqot"}) {
        const Result r = run(train(objective, objective, 1));
        ASSERT_EQ(r.code, 0) << r.out;
        EXPECT_EQ(load_flow_model(file(std::string(objective) + "/model.safetensors")).kind,
                  FieldKind::kernel);
        EXPECT_EQ(logged_losses(file(std::string(objective) + "/train_log.jsonl")).size(), 9u);
    }
}

// Likelihood training of the kernel field runs the fast float32 field (it has the closed-form
// divergence_backward), --reference the double one; the progress line says which, and both
// lower the loss from the first step's.
TEST_F(CliKernel, LikelihoodTrainsOnTheFastFieldOrTheReference) {
    for (const char* reference : {"", " --reference"}) {
        SCOPED_TRACE(reference);
        const std::string dir = std::string("lik") + (*reference ? "-ref" : "");
        const Result r = run(train(dir, "likelihood", 2) + " --ode-steps 4" + reference);
        ASSERT_EQ(r.code, 0) << r.out;
        EXPECT_NE(r.out.find(*reference ? "double CPU reference" : "fast float32 CPU field"),
                  std::string::npos)
            << r.out;
        const std::vector<double> losses = logged_losses(file(dir + "/train_log.jsonl"));
        ASSERT_EQ(losses.size(), 18u);
        EXPECT_LT(mean(losses, 12, 18), losses.front() - 1.0);
    }
}

TEST_F(CliKernel, DevicesAndOptionErrors) {
    // A kernel model for the commands that read one.
    ASSERT_EQ(run(train("tiny", "fm", 1)).code, 0);
    const std::string model = file("tiny/model.safetensors");
    // --device cuda: the kernel field has a CUDA backend, so the commands run on a usable GPU and
    // fail, saying why, without one (never a silent fallback to the CPU).
    const bool gpu = cuda_available();
    for (const std::string& cmd :
         {train("cuda", "fm", 1) + " --device cuda",
          train("lik_cuda", "likelihood", 1) + " --ode-steps 2 --device cuda",
          "sample --model " + model + " --samples 4 --device cuda --out-dir " + file("cuda_s"),
          "eval --model " + model + " --test " + file("test.npy") +
              " --samples 4 --device cuda --out " + file("cuda_e.json"),
          "field --model " + model + " --in " + file("test.npy") + " --t 0.5 --device cuda --out " +
              file("cuda_v.npy")}) {
        const Result r = run(cmd);
        if (gpu) {
            EXPECT_EQ(r.code, 0) << cmd << "\n" << r.out;
        } else {
            EXPECT_EQ(r.code, 1) << cmd << "\n" << r.out;
            EXPECT_NE(r.out.find("--device cuda asked for"), std::string::npos) << r.out;
        }
    }
    EXPECT_EQ(exists(file("cuda/model.safetensors")), gpu);
    EXPECT_EQ(exists(file("cuda_s")), gpu);
    EXPECT_EQ(exists(file("cuda_v.npy")), gpu);
    // auto picks the GPU when one is usable, as for an EGNN.
    const Result a = run("field --model " + model + " --in " + file("test.npy") +
                         " --t 0.5 --device auto --out " + file("auto_v.npy"));
    EXPECT_EQ(a.code, 0) << a.out;
    EXPECT_NE(a.out.find(gpu ? "on cuda" : "on cpu"), std::string::npos) << a.out;
    // Likelihood training: auto picks the CPU (the step is host code); cuda runs the kernel
    // field's work on the GPU (above), while the EGNN's is refused (no CUDA reverse mode of its
    // divergence).
    test::expect_usage_error("train --system dw4 --data " + file("train.npy") +
                                 " --objective likelihood --out " + file("lik_egnn") +
                                 " --epochs 1 --device cuda",
                             "EGNN likelihood training on CUDA is not built");
    const Result l = run(train("lik_auto", "likelihood", 1) + " --ode-steps 2 --device auto");
    EXPECT_EQ(l.code, 0) << l.out;
    EXPECT_NE(l.out.find("device: cpu"), std::string::npos) << l.out;

    test::expect_usage_error("train --system dw4 --data " + file("train.npy") +
                                 " --objective fm --out " + file("bad") + " --field mlp",
                             "--field must be egnn or kernel");
    test::expect_usage_error(train("bad", "fm", 1) + " --hidden 8", "--hidden and --layers");
    test::expect_usage_error("train --system dw4 --data " + file("train.npy") +
                                 " --objective fm --out " + file("bad") + " --radial-basis 8",
                             "--field kernel");
    // Other bases than the defaults are recorded in the model.
    const Result b = run(train("bases", "fm", 1) + " --radial-basis 12 --r-max 7 --time-basis 5");
    ASSERT_EQ(b.code, 0) << b.out;
    const FlowModel m = load_flow_model(file("bases/model.safetensors"));
    EXPECT_EQ(m.kernel_config.radial_count(), 12);
    EXPECT_DOUBLE_EQ(m.kernel_config.radial_centres.back(), 7.0);
    EXPECT_EQ(m.kernel_config.time_count(), 5);
    EXPECT_EQ(m.params.size(), 12u * 5u + 12u);
    // Resuming a kernel run as an EGNN run names the difference.
    const Result res = run("train --system dw4 --data " + file("train.npy") +
                           " --objective fm --out " + file("tiny") +
                           " --epochs 1 --batch 24 --lr 0.01 --log-every 1 --threads 1 --seed 3 "
                           "--resume");
    EXPECT_EQ(res.code, 1) << res.out;
    EXPECT_NE(res.out.find("kernel dynamics"), std::string::npos) << res.out;
    // ... and with other bases than the checkpoint's.
    const Result rb = run(train("tiny", "fm", 1) + " --resume --r-max 7");
    EXPECT_EQ(rb.code, 1) << rb.out;
    EXPECT_NE(rb.out.find("K = 32 on [0, 7]"), std::string::npos) << rb.out;
    const Result same = run(train("tiny", "fm", 1) + " --resume");
    EXPECT_EQ(same.code, 0) << same.out;
}

}  // namespace
}  // namespace eqflow
