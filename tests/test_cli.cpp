// The command-line program: exit codes, one-line errors, no partial outputs.
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "cli_test_util.h"
#include "eqflow/device.h"
#include "eqflow/npy.h"
#include "eqflow/systems.h"
#include "test_util.h"

namespace eqflow {
namespace {

using Cli = test::TempDirTest;

TEST_F(Cli, HelpAndUsageErrors) {
    EXPECT_EQ(run("").code, 2);
    const Result help = run("--help");
    EXPECT_EQ(help.code, 0);
    EXPECT_NE(help.out.find("data"), std::string::npos);
    EXPECT_NE(help.out.find("GPU:"), std::string::npos);
    EXPECT_EQ(run("frobnicate").code, 2);
    for (const char* cmd : {"data", "energy"}) {
        const Result r = run(std::string(cmd) + " --help");
        EXPECT_EQ(r.code, 0) << cmd;
        EXPECT_NE(r.out.find("usage: eqflow"), std::string::npos) << cmd;
    }
    test::expect_usage_error("data --system dw4 --out " + file("x.npy"), "--samples");
    test::expect_usage_error("data --system dw4 --samples 10 --out " + file("x.npy") + " --bogus 3",
                             "unknown option --bogus");
    EXPECT_FALSE(exists(file("x.npy")));
}

TEST_F(Cli, DataThenEnergy) {
    const std::string x = file("dw4.npy"), u = file("u.npy");
    Result r = run("data --system dw4 --samples 64 --seed 3 --burn-in 200 --out " + x);
    ASSERT_EQ(r.code, 0) << r.out;
    const NpyArray data = read_npy(x);
    EXPECT_EQ(data.shape, (Shape{64, 8}));
    r = run("energy --system dw4 --in " + x + " --out " + u + " --device cpu");
    ASSERT_EQ(r.code, 0) << r.out;
    const NpyArray energies = read_npy(u);
    ASSERT_EQ(energies.shape, (Shape{64}));
    const System s = make_system("dw4");
    for (int b = 0; b < 64; ++b)
        EXPECT_NEAR(energies.values[b], energy_reference(s, data.values.data() + 8 * b), 1e-9);
}

// `data` reports its thread count: --threads, else OMP_NUM_THREADS, else the CPUs this process
// may use (a job confined to one core by taskset runs one thread), never more than the chains.
// The file does not depend on it.
TEST_F(Cli, DataThreadsFollowTheOptionTheEnvironmentAndTheAffinityMask) {
    const std::string args = "data --system dw4 --samples 200 --seed 4 --burn-in 10 --out ";
    const std::string cli = std::string(EQFLOW_CLI_PATH) + " ";
    Result r = run(args + file("three.npy") + " --threads 3");
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("4 chains, threads: 3"), std::string::npos) << r.out;
    r = run(args + file("many.npy") + " --threads 9");
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("4 chains, threads: 4"), std::string::npos) << r.out;
    r = test::sh("env OMP_NUM_THREADS=2 " + cli + args + file("two.npy"));
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("threads: 2"), std::string::npos) << r.out;
    EXPECT_EQ(test::sh("cmp " + file("three.npy") + " " + file("two.npy")).code, 0);
    EXPECT_EQ(test::sh("cmp " + file("three.npy") + " " + file("many.npy")).code, 0);

    if (test::sh("command -v taskset").code != 0) GTEST_SKIP() << "no taskset";
    cpu_set_t set;
    CPU_ZERO(&set);
    ASSERT_EQ(sched_getaffinity(0, sizeof set, &set), 0);
    int first = 0;
    while (!CPU_ISSET(first, &set)) ++first;
    r = test::sh("env -u OMP_NUM_THREADS taskset -c " + std::to_string(first) + " " + cli + args +
                 file("one.npy"));
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("threads: 1\n"), std::string::npos) << r.out;
    EXPECT_EQ(test::sh("cmp " + file("three.npy") + " " + file("one.npy")).code, 0);
}

TEST_F(Cli, BadInputIsOneLineErrorWithoutOutput) {
    const std::string x = file("dw4.npy"), u = file("u.npy");
    ASSERT_EQ(run("data --system dw4 --samples 8 --burn-in 10 --out " + x).code, 0);
    const std::string nan_file = file("nan.npy");
    const std::vector<double> bad = {0, 0, 1, 0, 0, 1, std::nan(""), 1};
    write_npy(nan_file, bad.data(), Shape{1, 8});
    test::expect_one_line_errors(
        {
            {"energy --system lj13 --in " + x + " --out " + u, "does not match the system"},
            {"energy --system dw9 --in " + x + " --out " + u, "unknown system"},
            {"energy --system dw4 --in " + file("missing.npy") + " --out " + u, "cannot read"},
            {"energy --system dw4 --in " + nan_file + " --out " + u, "non-finite"},
            {"data --system nope --samples 5 --out " + u, "unknown system"},
            {"energy --system dw4 --in " + x + " --out " + dir_ + "/no/such/dir/u.npy",
             "cannot write"},
        },
        u);
    // No temporary files are left in the output directory either.
    const Result ls = run("energy --help");
    (void)ls;
    EXPECT_EQ(std::system(("test -z \"$(ls " + dir_ + " | grep tmp)\"").c_str()), 0);
}

TEST_F(Cli, DeviceCudaWithoutGpuSaysWhy) {
    if (cuda_available()) GTEST_SKIP() << "a GPU is present";
    const std::string x = file("dw4.npy");
    ASSERT_EQ(run("data --system dw4 --samples 4 --burn-in 10 --out " + x).code, 0);
    const Result r =
        run("energy --system dw4 --in " + x + " --out " + file("u.npy") + " --device cuda");
    EXPECT_EQ(r.code, 1);
    EXPECT_NE(r.out.find("--device cuda"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace eqflow
