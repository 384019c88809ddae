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
#include "eqflow/flow.h"
#include "eqflow/io.h"
#include "eqflow/json.h"
#include "eqflow/model_io.h"
#include "eqflow/molecule.h"
#include "eqflow/npy.h"
#include "eqflow/systems.h"
#include "test_util.h"

namespace eqflow {
namespace {

using AldpCli = test::TempDirTest;

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

// train -> sample -> eval on aldp: the model records the data's length scale, samples come back
// in nm and of the right handedness, and eval reports the aldp analysis (mirrored fraction, phi
// free-energy differences, a Ramachandran figure). Tiny model and budget: this checks the
// plumbing, not the quality.
TEST_F(AldpCli, TrainSampleEvalReportTheMolecularAnalysis) {
    const std::string data = file("train.npy"), run_dir = file("run"),
                      out = file("evals/m.json");  // eval creates the directory
    auto gen = test::rng(11);
    std::normal_distribution<double> noise(0.0, 0.01);
    std::vector<double> x;
    const std::vector<double> x0 = aldp_structure().positions;
    for (int b = 0; b < 24; ++b)
        for (double v : x0) x.push_back(v + noise(gen));
    write_npy(data, x.data(), Shape{24, 66});
    const Result t = run("train --system aldp --data " + data + " --objective eqot --out " +
                         run_dir + " --epochs 1 --batch 8 --hidden 8 --layers 2 --device cpu");
    ASSERT_EQ(t.code, 0) << t.out;
    const EgnnModel model = load_model(run_dir + "/model.safetensors");
    // The default length scale for molecules: the RMS coordinate of the centred data.
    std::vector<double> centred = x;
    remove_mean(24, 22, 3, centred.data());
    double sum = 0;
    for (double v : centred) sum += v * v;
    EXPECT_NEAR(model.config.length_scale, std::sqrt(sum / static_cast<double>(centred.size())),
                1e-12);
    EXPECT_GT(model.config.length_scale, 0.05);  // nm: the molecule is a few tenths of a nm
    EXPECT_LT(model.config.length_scale, 0.5);

    const Result s = run("sample --model " + run_dir +
                         "/model.safetensors --samples 6 --solver rk4 --steps 4 --device cpu "
                         "--out-dir " +
                         file("samples"));
    ASSERT_EQ(s.code, 0) << s.out;
    int64_t n = 0;
    const std::vector<double> xs = load_configurations(file("samples/x.npy"), 22, 3, &n, false);
    ASSERT_EQ(n, 6);
    for (int b = 0; b < 6; ++b) EXPECT_TRUE(aldp_is_l(xs.data() + 66 * b)) << b;
    const Json summary = Json::parse(read_file(file("samples/summary.json")));
    EXPECT_TRUE(summary.at("chirality_folded").as_bool());
    // The same samples as trajectories: one PDB model per sample, and a DCD with its topology.
    for (const char* format : {"pdb", "dcd"}) {
        const std::string dir = file(std::string("traj_") + format);
        const Result tr = run("sample --model " + run_dir +
                              "/model.safetensors --samples 6 --solver rk4 --steps 4 --device cpu "
                              "--format " +
                              format + " --out-dir " + dir);
        ASSERT_EQ(tr.code, 0) << tr.out;
        EXPECT_EQ(load_configurations(dir + "/x.npy", 22, 3, &n, false), xs) << format;
    }
    const std::string pdb = read_file(file("traj_pdb/samples.pdb"));
    size_t models = 0;
    for (size_t at = pdb.find("MODEL "); at != std::string::npos; at = pdb.find("MODEL ", at + 1))
        ++models;
    EXPECT_EQ(models, 6u);
    const PdbStructure first = parse_pdb(pdb.substr(0, pdb.find("ENDMDL")), "samples.pdb");
    EXPECT_EQ(first.atom_names, aldp_structure().atom_names);
    for (int k = 0; k < 66; ++k) EXPECT_NEAR(first.positions[k], xs[k], 5.1e-5) << k;
    const std::string dcd = read_file(file("traj_dcd/samples.dcd"));
    EXPECT_EQ(dcd.substr(4, 4), "CORD");
    EXPECT_EQ(dcd.size(), (4 + 84 + 4) + (4 + 84 + 4) + (4 + 4 + 4) + 6 * 3 * (4 + 88 + 4));
    EXPECT_TRUE(exists(file("traj_dcd/topology.pdb")));
    // Only molecules have a topology.
    const Result no_top =
        run("sample --model " + run_dir +
            "/model.safetensors --samples 2 --system lj13 --format pdb --out-dir " + file("bad"));
    EXPECT_NE(no_top.code, 0);
    EXPECT_GE(summary.at("mirrored_fraction").as_number(), 0.0);
    EXPECT_LE(summary.at("mirrored_fraction").as_number(), 1.0);

    const Result e =
        run("eval --model " + run_dir + "/model.safetensors --test " + data +
            " --test-max 6 --samples 8 --solver rk4 --steps 4 --device cpu --out " + out);
    ASSERT_EQ(e.code, 0) << e.out;
    EXPECT_NE(e.out.find("aldp: dF"), std::string::npos) << e.out;
    const Json m = Json::parse(read_file(out));
    EXPECT_TRUE(m.at("chirality_folded").as_bool());
    EXPECT_NEAR(m.at("length_scale").as_number(), model.config.length_scale, 1e-12);
    const Json& a = m.at("aldp");
    const Json& md = a.at("delta_f_md");
    // The MD reference uses every test configuration, not only the --test-max NLL subset.
    EXPECT_EQ(md.at("n_phi_negative").as_number() + md.at("n_phi_positive").as_number(), 24.0);
    EXPECT_TRUE(a.at("delta_f_samples").contains("delta_f"));
    const Json& rw = a.at("delta_f_reweighted");
    const double e_pos = rw.at("effective_samples_phi_positive").as_number(),
                 e_neg = rw.at("effective_samples_phi_negative").as_number();
    EXPECT_GE(e_pos, 0.0);
    EXPECT_GE(e_neg, 0.0);
    EXPECT_GE(e_pos + e_neg, 1.0);  // the largest weight alone counts as one
    EXPECT_LE(e_pos + e_neg, 8.0);
    EXPECT_TRUE(exists(a.at("figure_ramachandran").as_string()));
    EXPECT_NE(read_file(a.at("figure_ramachandran").as_string()).find("<svg"), std::string::npos);
}

}  // namespace
}  // namespace eqflow
