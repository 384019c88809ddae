// Alanine dipeptide against OpenMM (built only with EQFLOW_OPENMM): the serialized System
// round-trips, eqflow's own force field matches OpenMM's Reference platform term by term and in
// total, energies and forces, on MD frames and perturbed structures; Langevin MD samples at its
// temperature.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "eqflow/molecule.h"
#include "test_util.h"

namespace eqflow {
namespace {

std::string system_path() {
    return aldp_data_dir() + "/aldp_system.xml";
}

// Parameters pass through the same decimal text on both sides: they must agree exactly.
void expect_same(const ForceField& a, const ForceField& b) {
    ASSERT_EQ(a.n_atoms, b.n_atoms);
    EXPECT_EQ(a.masses, b.masses);
    test::expect_same_records(a.bonds, b.bonds, &HarmonicBond::i, &HarmonicBond::j,
                              &HarmonicBond::length, &HarmonicBond::k);
    test::expect_same_records(a.angles, b.angles, &HarmonicAngle::j, &HarmonicAngle::angle,
                              &HarmonicAngle::k_theta);
    test::expect_same_records(a.torsions, b.torsions, &PeriodicTorsion::l,
                              &PeriodicTorsion::periodicity, &PeriodicTorsion::phase,
                              &PeriodicTorsion::k_phi);
    EXPECT_EQ(a.charges, b.charges);
    EXPECT_EQ(a.sigmas, b.sigmas);
    EXPECT_EQ(a.epsilons, b.epsilons);
    test::expect_same_records(a.exceptions, b.exceptions, &NonbondedException::charge_prod,
                              &NonbondedException::sigma, &NonbondedException::epsilon);
    EXPECT_EQ(a.has_gb, b.has_gb);
    EXPECT_EQ(a.gb_charges, b.gb_charges);
    EXPECT_EQ(a.gb_radii, b.gb_radii);
    EXPECT_EQ(a.gb_scales, b.gb_scales);
    EXPECT_EQ(a.solvent_dielectric, b.solvent_dielectric);
    EXPECT_EQ(a.surface_area_energy, b.surface_area_energy);
    EXPECT_EQ(a.force_groups, b.force_groups);
}

TEST(AldpOpenMM, SerializedSystemRoundTrips) {
    ASSERT_TRUE(openmm_available());
    OpenMMEvaluator omm(system_path());
    EXPECT_EQ(omm.n_atoms(), kAldpAtoms);
    const std::string again = omm.serialize();
    expect_same(parse_openmm_system_xml(again), *aldp_force_field());
    // And once more through a file OpenMM wrote.
    const std::string path = test::temp_path("aldp_roundtrip.xml");
    {
        FILE* f = std::fopen(path.c_str(), "w");
        ASSERT_NE(f, nullptr);
        std::fputs(again.c_str(), f);
        std::fclose(f);
    }
    OpenMMEvaluator omm2(path);
    expect_same(parse_openmm_system_xml(omm2.serialize()), *aldp_force_field());
    std::remove(path.c_str());
}

// Langevin MD on OpenMM's Reference platform (deterministic, double): `samples` frames
// `steps_per_frame` steps apart after `equilibration_steps` steps.
MdOptions reference_md(int64_t samples, int64_t steps_per_frame, int64_t equilibration_steps,
                       uint64_t seed) {
    MdOptions opt;
    opt.samples = samples;
    opt.steps_per_frame = steps_per_frame;
    opt.equilibration_steps = equilibration_steps;
    opt.seed = seed;
    opt.platform = "Reference";
    return opt;
}

// Short Langevin MD with OpenMM (Reference platform: deterministic, double) and perturbed copies
// of the minimised structure: the configurations the force field is compared on.
std::vector<double> test_configurations(int* count) {
    const MdOptions opt = reference_md(1000, 20, 2000, 5);
    std::vector<double> x = openmm_langevin_md(system_path(), aldp_structure().positions, opt);
    auto gen = test::rng(3);
    std::normal_distribution<double> noise(0.0, 0.01);
    for (int rep = 0; rep < 50; ++rep) {
        std::vector<double> p = aldp_structure().positions;
        for (double& v : p) v += noise(gen);
        x.insert(x.end(), p.begin(), p.end());
    }
    *count = static_cast<int>(x.size() / (3 * kAldpAtoms));
    return x;
}

// Relative energy error <= 1e-5 (the bound) with a floor of 1e-6 kJ/mol for terms near
// zero; in practice both are double sums of the same terms and agree to ~1e-12. Forces: 1e-5 of
// the configuration's largest force component plus 1e-6 kJ/mol/nm.
constexpr double kEnergyRtol = 1e-5;
constexpr double kEnergyAtol = 1e-6;
constexpr double kForceRtolOfMax = 1e-5;

TEST(AldpOpenMM, OwnForceFieldMatchesOpenMMPerTermAndTotal) {
    const ForceField& ff = *aldp_force_field();
    int B = 0;
    const std::vector<double> x = test_configurations(&B);
    std::printf("comparing on %d configurations\n", B);
    OpenMMEvaluator omm(system_path());
    const unsigned terms[] = {kTermBonds,     kTermAngles, kTermTorsions,
                              kTermNonbonded, kTermGB,     kTermAll};
    const char* names[] = {"bonds", "angles", "torsions", "nonbonded", "gb", "total"};
    for (int t = 0; t < 6; ++t) {
        const int groups = t < 5 ? (1 << ff.force_groups[t]) : -1;
        std::vector<double> e_ref(B), f_ref(x.size());
        omm.evaluate(x.data(), B, e_ref.data(), f_ref.data(), groups);
        std::vector<double> e(B), g(x.size());
        double worst_rel = 0.0;
        for (int b = 0; b < B; ++b) {
            e[b] = molecule_energy_reference(ff, x.data() + b * 66, g.data() + b * 66, terms[t]);
            worst_rel = std::max(
                worst_rel, std::fabs(e[b] - e_ref[b]) / std::max(std::fabs(e_ref[b]), 1e-300));
            double fmax = 0.0;
            for (int k = 0; k < 66; ++k) fmax = std::max(fmax, std::fabs(f_ref[b * 66 + k]));
            std::vector<double> f(66), fr(f_ref.begin() + b * 66, f_ref.begin() + (b + 1) * 66);
            for (int k = 0; k < 66; ++k) f[k] = -g[b * 66 + k];
            EXPECT_ALL_CLOSE(f, fr, 1e-6 + kForceRtolOfMax * fmax, 0.0)
                << names[t] << " forces, configuration " << b;
        }
        EXPECT_ALL_CLOSE(e, e_ref, kEnergyAtol, kEnergyRtol) << names[t];
        ASSERT_TRUE(test::not_all_zero(e_ref)) << names[t];
        std::printf("%-9s worst relative energy error %.2e\n", names[t], worst_rel);
    }
}

TEST(AldpOpenMM, LangevinMdSamplesAtItsTemperature) {
    // 300 frames, one per 0.1 ps after 10 ps of equilibration, Reference platform (the CPU
    // platform's spinning threads are slower on a busy 2-core machine). The kinetic energy must
    // average dof/2 kT: its per-frame spread is sqrt(dof/2) kT (~14 kJ/mol); frames 0.1 ps apart
    // with friction 1/ps are correlated, so the standard error is taken from 10 block means, and
    // the tolerance is 5 of them (a false alarm has odds below 1e-4).
    const MdOptions opt = reference_md(300, 100, 10000, 11);
    MdStats stats;
    std::vector<double> kinetic;
    const std::vector<double> x =
        openmm_langevin_md(system_path(), aldp_structure().positions, opt, &stats);
    ASSERT_EQ(x.size(), 300u * 66u);
    const double kT = kBoltzmannKJ * opt.temperature;
    EXPECT_EQ(stats.dof, 3 * 22 - 3);
    const double expected_kin = 0.5 * stats.dof * kT;
    const int blocks = 10;
    ASSERT_EQ(stats.kinetic.size(), 300u);
    std::vector<double> block_means(blocks, 0.0);
    for (int s = 0; s < 300; ++s) block_means[s / 30] += stats.kinetic[s] / 30;
    double mean = 0.0, var = 0.0;
    for (double m : block_means) mean += m / blocks;
    for (double m : block_means) var += (m - mean) * (m - mean) / (blocks - 1);
    const double se = std::sqrt(var / blocks);
    std::printf("MD on %s: <K> = %.2f +- %.2f kJ/mol (equipartition %.2f), <U> = %.2f kJ/mol\n",
                stats.platform.c_str(), mean, se, expected_kin, stats.mean_potential);
    EXPECT_NEAR(mean, expected_kin, 5 * std::max(se, 0.5));
    EXPECT_NEAR(stats.mean_kinetic, mean, 1e-9 * mean);
    // The frames are the configurations OpenMM reported the potential energies of.
    const ForceField& ff = *aldp_force_field();
    double mean_u = 0.0;
    for (int s = 0; s < 300; ++s) mean_u += molecule_energy_reference(ff, x.data() + 66 * s) / 300;
    // Reference platform in double: the same sums as the own force field (see the test above).
    EXPECT_NEAR(mean_u, stats.mean_potential, kEnergyRtol * std::fabs(stats.mean_potential));
    // All frames keep the L configuration (MD cannot invert a stereocentre).
    for (int s = 0; s < 300; ++s) EXPECT_TRUE(aldp_is_l(x.data() + 66 * s)) << s;
}

}  // namespace
}  // namespace eqflow
