// `eqflow data|energy --system aldp`: MD frames (with OpenMM) or a clear error (without), and
// reduced energies u = E / (k_B 300 K) that match the library.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "cli_test_util.h"
#include "eqflow/molecule.h"
#include "eqflow/npy.h"
#include "eqflow/systems.h"
#include "test_util.h"

namespace eqflow {
namespace {

using test::exists;
using test::Result;
using test::run;
class AldpCli : public test::TempDirTest {
  protected:
    AldpCli() : TempDirTest("aldp_cli") {}
};

TEST_F(AldpCli, DataThenEnergy) {
    const System s = make_system("aldp");
    const std::string data = file("aldp.npy"), u = file("u.npy");
    std::vector<double> x;
    int64_t count = 0;
    if (openmm_available()) {
        const Result r =
            run("data --system aldp --samples 12 --equilibrate 1 --frame-interval 0.05 "
                "--platform Reference --seed 3 --out " +
                data);
        ASSERT_EQ(r.code, 0) << r.out;
        EXPECT_NE(r.out.find("100%"), std::string::npos) << r.out;  // the progress line
        x = load_configurations(data, 22, 3, &count, /*center=*/false);
        ASSERT_EQ(count, 12);
        for (int b = 0; b < 12; ++b) EXPECT_TRUE(aldp_is_l(x.data() + 66 * b));
        // Same seed, same frames (OpenMM's Reference platform is deterministic).
        const Result again =
            run("data --system aldp --samples 12 --equilibrate 1 --frame-interval 0.05 "
                "--platform Reference --seed 3 --out " +
                file("again.npy"));
        ASSERT_EQ(again.code, 0) << again.out;
        int64_t c2 = 0;
        EXPECT_EQ(load_configurations(file("again.npy"), 22, 3, &c2, false), x);
    } else {
        const Result r = run("data --system aldp --samples 4 --out " + data);
        EXPECT_EQ(r.code, 1) << r.out;
        EXPECT_NE(r.out.find("needs OpenMM"), std::string::npos) << r.out;
        EXPECT_FALSE(exists(data));
        // Without MD, the energies are checked on perturbed copies of the structure.
        auto gen = test::rng(4);
        std::normal_distribution<double> noise(0.0, 0.01);
        for (int b = 0; b < 12; ++b)
            for (double v : aldp_structure().positions) x.push_back(v + noise(gen));
        count = 12;
        write_npy(data, x.data(), Shape{12, 66});
    }
    const Result e = run("energy --system aldp --device cpu --in " + data + " --out " + u);
    ASSERT_EQ(e.code, 0) << e.out;
    const NpyArray ua = read_npy(u);
    ASSERT_EQ(ua.values.size(), 12u);
    const double kT = 0.00831446261815324 * 300.0;
    for (int b = 0; b < 12; ++b) {
        // The CLI centres the positions first: the energy is translation invariant up to rounding.
        const double expected = molecule_energy_reference(*s.force_field, x.data() + 66 * b) / kT;
        EXPECT_NEAR(ua.values[b], expected, 1e-9 * std::fabs(expected) + 1e-9) << b;
    }
}

TEST_F(AldpCli, RejectsWrongShapes) {
    const std::string bad = file("bad.npy");
    std::vector<double> x(2 * 21 * 3, 0.1);
    write_npy(bad, x.data(), Shape{2, 63});
    const Result r = run("energy --system aldp --in " + bad + " --out " + file("u.npy"));
    EXPECT_EQ(r.code, 1) << r.out;
    EXPECT_FALSE(exists(file("u.npy")));
}

}  // namespace
}  // namespace eqflow
