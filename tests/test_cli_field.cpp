// `eqflow field`: help, one-line errors with the right exit codes, no partial outputs, and the
// values it writes equal the library's.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "cli_test_util.h"
#include "eqflow/egnn.h"
#include "eqflow/model_io.h"
#include "eqflow/npy.h"
#include "test_util.h"

namespace eqflow {
namespace {

int count_lines(const std::string& s) {
    int lines = 0;
    for (char ch : s) lines += ch == '\n';
    return lines;
}

class CliField : public test::TempDirTest {
  protected:
    // A small DW4-shaped model with coordinate layers that matter, saved to model.safetensors.
    EgnnModel make_model() {
        EgnnModel m;
        m.config = default_egnn_config("dw4", 4, 2);
        m.config.hidden = 8;
        m.config.layers = 2;
        m.params = egnn_init_parameters(m.config, 5);
        auto gen = test::rng(31);
        for (const ParamEntry& e : egnn_parameter_layout(m.config))
            if (e.name.find("coord_mlp.2") != std::string::npos)
                for (int64_t k = 0; k < shape_numel(e.shape); ++k)
                    m.params[e.offset + k] = test::random_normal(1, gen, 0.5)[0];
        save_model(file("model.safetensors"), m);
        return m;
    }
};

TEST_F(CliField, HelpAndUsageErrors) {
    Result r = run("field --help");
    EXPECT_EQ(r.code, 0);
    EXPECT_NE(r.out.find("usage: eqflow field"), std::string::npos);
    EXPECT_NE(run("--help").out.find("field"), std::string::npos);
    test::expect_usage_error("field --in x.npy --t 0.5 --out " + file("v.npy"), "--model");
    test::expect_usage_error("field --model m --in x.npy --t abc --out " + file("v.npy"), "--t");
    test::expect_usage_error(
        "field --model m --in x.npy --t 0.5 --out " + file("v.npy") + " --bogus 1",
        "unknown option --bogus");
    EXPECT_FALSE(exists(file("v.npy")));
}

TEST_F(CliField, BadInputsAreOneLineErrors) {
    make_model();
    auto gen = test::rng(32);
    const std::vector<double> wrong = test::random_normal(3 * 9, gen);
    write_npy(file("wrong.npy"), wrong.data(), Shape{3, 9});
    const std::vector<double> good = test::random_normal(3 * 8, gen);
    write_npy(file("x.npy"), good.data(), Shape{3, 8});
    {
        const std::string junk = "this is not a model";
        FILE* f = std::fopen(file("junk.safetensors").c_str(), "wb");
        std::fwrite(junk.data(), 1, junk.size(), f);
        std::fclose(f);
    }
    const std::string out = " --t 0.5 --out " + file("v.npy");
    for (const std::string& args :
         {"field --model " + file("missing.safetensors") + " --in " + file("x.npy") + out,
          "field --model " + file("junk.safetensors") + " --in " + file("x.npy") + out,
          "field --model " + file("model.safetensors") + " --in " + file("wrong.npy") + out,
          "field --model " + file("model.safetensors") + " --in " + file("none.npy") + out}) {
        const Result r = run(args);
        EXPECT_EQ(r.code, 1) << args << "\n" << r.out;
        EXPECT_EQ(count_lines(r.out), 1) << r.out;
        EXPECT_NE(r.out.find("eqflow field: error:"), std::string::npos) << r.out;
        EXPECT_FALSE(exists(file("v.npy")));
    }
}

TEST_F(CliField, WritesFieldAndDivergence) {
    const EgnnModel m = make_model();
    auto gen = test::rng(33);
    const int64_t N = 5;
    const std::vector<double> x = test::random_configurations(N, 4, 2, 1.5, 0.5, gen);
    // Shape [N, n, d] on input; the command centres the configurations on load.
    write_npy(file("x.npy"), x.data(), Shape{N, 4, 2});
    const Result r =
        run("field --model " + file("model.safetensors") + " --in " + file("x.npy") +
            " --t 0.25 --out " + file("v.npy") + " --div-out " + file("div.npy") + " --reference");
    ASSERT_EQ(r.code, 0) << r.out;

    std::vector<double> xc = x;
    for (int64_t b = 0; b < N; ++b)
        for (int a = 0; a < 2; ++a) {
            double mean = 0.0;
            for (int i = 0; i < 4; ++i) mean += xc[(b * 4 + i) * 2 + a] / 4.0;
            for (int i = 0; i < 4; ++i) xc[(b * 4 + i) * 2 + a] -= mean;
        }
    const std::vector<double> t(N, 0.25);
    std::vector<double> v(N * 8), div(N);
    egnn_divergence(m.config, m.params.data(), N, xc.data(), t.data(), v.data(), div.data());
    const NpyArray v_file = read_npy(file("v.npy"));
    const NpyArray div_file = read_npy(file("div.npy"));
    EXPECT_EQ(v_file.shape, (Shape{N, 8}));
    EXPECT_EQ(div_file.shape, (Shape{N}));
    EXPECT_TRUE(test::not_all_zero(v));
    // Same library, same inputs, float64 files: identical.
    EXPECT_EQ(v_file.values, v);
    EXPECT_EQ(div_file.values, div);

    // Without --div-out only v is written, and it is the same field.
    std::remove(file("v.npy").c_str());
    const Result r2 = run("field --model " + file("model.safetensors") + " --in " + file("x.npy") +
                          " --t 0.25 --out " + file("v.npy") + " --reference");
    ASSERT_EQ(r2.code, 0) << r2.out;
    EXPECT_EQ(read_npy(file("v.npy")).values, v);

    // The default CPU field is the fast float32 one: the reference's values to float32 accuracy
    // (the tolerances of test_egnn_fast).
    std::remove(file("v.npy").c_str());
    const Result r3 =
        run("field --model " + file("model.safetensors") + " --in " + file("x.npy") +
            " --t 0.25 --out " + file("v.npy") + " --div-out " + file("div.npy") + " --device cpu");
    ASSERT_EQ(r3.code, 0) << r3.out;
    double vscale = 0, dscale = 0;
    for (double y : v) vscale = std::max(vscale, std::fabs(y));
    for (double y : div) dscale = std::max(dscale, std::fabs(y));
    EXPECT_ALL_CLOSE(read_npy(file("v.npy")).values, v, 2e-4 * (1 + vscale), 2e-4);
    EXPECT_ALL_CLOSE(read_npy(file("div.npy")).values, div, 1e-3 * (1 + dscale), 1e-3);
}

}  // namespace
}  // namespace eqflow
