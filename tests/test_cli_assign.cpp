// `eqflow assign`: shapes, outputs, one-line errors, no partial outputs.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cli_test_util.h"
#include "eqflow/assignment.h"
#include "eqflow/device.h"
#include "eqflow/npy.h"
#include "test_util.h"

namespace eqflow {
namespace {

using CliAssign = test::TempDirTest;

TEST_F(CliAssign, Help) {
    const Result r = run("assign --help");
    EXPECT_EQ(r.code, 0);
    EXPECT_NE(r.out.find("usage: eqflow assign"), std::string::npos);
    EXPECT_NE(run("--help").out.find("assign"), std::string::npos);
    EXPECT_EQ(run("assign --out " + file("p.npy")).code, 2);  // --in missing
    EXPECT_EQ(run("assign --in a --out b --bogus 1").code, 2);
}

TEST_F(CliAssign, BatchAndSingle) {
    auto gen = test::rng(1001);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    const int P = 17, n = 13;
    std::vector<double> cost(P * n * n);
    for (auto& c : cost) c = u(gen);
    write_npy(file("c.npy"), cost.data(), Shape{P, n, n});
    Result r = run("assign --in " + file("c.npy") + " --out " + file("p.npy") + " --totals " +
                   file("t.npy") + " --device cpu");
    ASSERT_EQ(r.code, 0) << r.out;
    const NpyArray perm = read_npy(file("p.npy")), totals = read_npy(file("t.npy"));
    EXPECT_EQ(perm.dtype, NpyDtype::i64);
    ASSERT_EQ(perm.shape, (Shape{P, n}));
    ASSERT_EQ(totals.shape, (Shape{P}));
    for (int p = 0; p < P; ++p) {
        std::vector<int64_t> ref(n);
        const double best = linear_sum_assignment_host(cost.data() + p * n * n, n, ref.data());
        double sum = 0;
        std::vector<int> seen(n, 0);
        for (int i = 0; i < n; ++i) {
            const int64_t j = static_cast<int64_t>(perm.values[p * n + i]);
            ASSERT_TRUE(j >= 0 && j < n && !seen[j]);
            seen[j] = 1;
            sum += cost[(p * n + i) * n + j];
        }
        EXPECT_EQ(sum, best) << p;
        EXPECT_EQ(totals.values[p], best) << p;
    }
    // One float32 matrix [n, n] is one problem: output [1, n].
    const std::vector<float> one = {4, 1, 3, 2, 0, 5, 3, 2, 2};
    write_npy(file("one.npy"), one.data(), Shape{3, 3});
    r = run("assign --in " + file("one.npy") + " --out " + file("q.npy"));
    ASSERT_EQ(r.code, 0) << r.out;
    const NpyArray q = read_npy(file("q.npy"));
    EXPECT_EQ(q.shape, (Shape{1, 3}));
    EXPECT_EQ(q.values, (std::vector<double>{1, 0, 2}));
    // Empty batch.
    write_npy(file("empty.npy"), cost.data(), Shape{0, 4, 4});
    r = run("assign --in " + file("empty.npy") + " --out " + file("e.npy") + " --device cpu");
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_EQ(read_npy(file("e.npy")).shape, (Shape{0, 4}));
}

TEST_F(CliAssign, BadInputIsOneLineErrorWithoutOutput) {
    const double inf = std::numeric_limits<double>::infinity();
    std::vector<double> nan_cost(2 * 3 * 3, 1.0), inf_cost(2 * 3 * 3, 1.0), rect(2 * 3 * 4, 1.0);
    nan_cost[13] = std::nan("");
    for (int j = 0; j < 3; ++j) inf_cost[9 + 3 + j] = inf;  // problem 1, row 1 all forbidden
    write_npy(file("nan.npy"), nan_cost.data(), Shape{2, 3, 3});
    write_npy(file("inf.npy"), inf_cost.data(), Shape{2, 3, 3});
    write_npy(file("rect.npy"), rect.data(), Shape{2, 3, 4});
    write_npy(file("flat.npy"), rect.data(), Shape{24});
    const std::string out = file("p.npy");
    test::expect_one_line_errors(
        {
            {"assign --in " + file("nan.npy") + " --out " + out + " --device cpu",
             "problem 1 has a NaN"},
            {"assign --in " + file("inf.npy") + " --out " + out + " --device cpu",
             "problem 1 is infeasible"},
            {"assign --in " + file("rect.npy") + " --out " + out, "expected [P, n, n] or [n, n]"},
            {"assign --in " + file("flat.npy") + " --out " + out, "expected [P, n, n] or [n, n]"},
            {"assign --in " + file("missing.npy") + " --out " + out, "cannot read"},
            {"assign --in " + file("inf.npy") + " --out " + dir_ +
                 "/no/such/dir/p.npy --device cpu",
             "infeasible"},
        },
        out);
    // An unwritable output directory: one-line error, nothing left behind.
    std::vector<double> ok(9, 1.0);
    write_npy(file("ok.npy"), ok.data(), Shape{3, 3});
    const Result r =
        run("assign --in " + file("ok.npy") + " --out " + dir_ + "/no/such/dir/p.npy --device cpu");
    EXPECT_EQ(r.code, 1) << r.out;
    EXPECT_NE(r.out.find("cannot write"), std::string::npos) << r.out;
    EXPECT_EQ(std::system(("test -z \"$(ls " + dir_ + " | grep tmp)\"").c_str()), 0);
    if (!cuda_available()) {
        const Result g = run("assign --in " + file("ok.npy") + " --out " + out + " --device cuda");
        EXPECT_EQ(g.code, 1) << g.out;
        EXPECT_FALSE(exists(out));
    }
}

}  // namespace
}  // namespace eqflow
