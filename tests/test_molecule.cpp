// Molecular force field (eqflow/molecule.h) without OpenMM: the System XML reader, analytic
// forces against finite differences term by term, invariances, the batched API, dihedrals of
// constructed configurations, chirality and mirror images, atom types.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <set>

#include "eqflow/error.h"
#include "eqflow/io.h"
#include "eqflow/molecule.h"
#include "eqflow/systems.h"
#include "eqflow/tensor.h"
#include "test_util.h"

namespace eqflow {
namespace {

constexpr double kPi = 3.14159265358979323846;

std::vector<double> aldp_positions() {
    std::vector<double> x = aldp_structure().positions;
    return x;
}

// The minimised structure with Gaussian noise of `scale` nm on every coordinate.
std::vector<double> perturbed(const std::vector<double>& x0, double scale, std::mt19937_64& gen) {
    std::vector<double> x = x0;
    std::normal_distribution<double> dist(0.0, scale);
    for (double& v : x) v += dist(gen);
    return x;
}

std::vector<double> rotate(const std::vector<double>& x, double a, double b, double c,
                           const double shift[3]) {
    // R = Rz(a) Ry(b) Rx(c), then a translation.
    const double ca = std::cos(a), sa = std::sin(a), cb = std::cos(b), sb = std::sin(b),
                 cc = std::cos(c), sc = std::sin(c);
    const double R[3][3] = {{ca * cb, ca * sb * sc - sa * cc, ca * sb * cc + sa * sc},
                            {sa * cb, sa * sb * sc + ca * cc, sa * sb * cc - ca * sc},
                            {-sb, cb * sc, cb * cc}};
    std::vector<double> y(x.size());
    for (size_t i = 0; i < x.size() / 3; ++i)
        for (int r = 0; r < 3; ++r)
            y[3 * i + r] =
                R[r][0] * x[3 * i] + R[r][1] * x[3 * i + 1] + R[r][2] * x[3 * i + 2] + shift[r];
    return y;
}

TEST(MoleculeXml, ReadsTheAldpSystem) {
    const ForceField& ff = *aldp_force_field();
    EXPECT_EQ(ff.n_atoms, 22);
    EXPECT_EQ(ff.bonds.size(), 21u);  // 22 atoms in one tree: 21 bonds
    EXPECT_EQ(ff.angles.size(), 36u);
    EXPECT_GT(ff.torsions.size(), 30u);
    EXPECT_TRUE(ff.has_gb);
    EXPECT_EQ(ff.solute_dielectric, 1.0);
    EXPECT_EQ(ff.solvent_dielectric, 78.3);
    EXPECT_EQ(ff.surface_area_energy, 2.25936);
    for (int t = 0; t < 5; ++t) EXPECT_EQ(ff.force_groups[t], t);  // the script's numbering
    double q = 0.0, qgb = 0.0;
    for (int i = 0; i < 22; ++i) {
        q += ff.charges[i];
        qgb += ff.gb_charges[i];
        EXPECT_EQ(ff.charges[i], ff.gb_charges[i]) << "atom " << i;
    }
    // Neutral molecule: Amber charges are given to 4 decimals.
    EXPECT_NEAR(q, 0.0, 1e-9);
    EXPECT_NEAR(qgb, 0.0, 1e-9);
    // Exceptions: every pair within 3 bonds is either excluded (1-2, 1-3) or a scaled 1-4 pair.
    std::set<std::pair<int, int>> bonded;
    for (const auto& b : ff.bonds) bonded.insert(std::minmax(b.i, b.j));
    int excluded = 0, scaled = 0;
    for (const auto& e : ff.exceptions) {
        if (e.epsilon == 0.0 && e.charge_prod == 0.0)
            ++excluded;
        else
            ++scaled;
    }
    EXPECT_EQ(excluded, 21 + 36);  // 1-2 and 1-3 pairs
    EXPECT_GT(scaled, 0);
    // The pair list: all 231 pairs minus the pure exclusions.
    EXPECT_EQ(static_cast<int>(ff.pairs.size()), 231 - excluded);
}

TEST(MoleculeXml, RejectsWhatItCannotRepresent) {
    const std::string head =
        "<System version=\"1\"><Particles><Particle mass=\"1\"/><Particle mass=\"1\"/></Particles>";
    EXPECT_NO_THROW(parse_openmm_system_xml(head + "<Forces/></System>"));
    EXPECT_THROW(
        parse_openmm_system_xml(
            head + "<Constraints><Constraint d=\"1\" p1=\"0\" p2=\"1\"/></Constraints></System>"),
        Error);
    EXPECT_THROW(parse_openmm_system_xml(
                     head + "<Forces><Force type=\"CustomBondForce\"/></Forces></System>"),
                 Error);
    EXPECT_THROW(
        parse_openmm_system_xml(
            head + "<Forces><Force type=\"HarmonicBondForce\"><Bonds><Bond d=\"1\" k=\"1\" "
                   "p1=\"0\" p2=\"5\"/></Bonds></Force></Forces></System>"),
        Error);
    EXPECT_THROW(
        parse_openmm_system_xml(
            head +
            "<Forces><Force type=\"NonbondedForce\" method=\"4\"></Force></Forces></System>"),
        Error);
    EXPECT_THROW(parse_openmm_system_xml(head + "<Forces>"), Error);
    EXPECT_THROW(parse_openmm_system_xml("<System/>"), Error);
}

// Central differences of E in double. Step 1e-6 nm: truncation ~h^2 E''' and round-off
// ~eps |E| / h stay below 1e-5 kJ/mol/nm for these energies (|E| < 1e4 kJ/mol); the tolerance
// is a relative 1e-6 of the largest gradient component plus 1e-4 kJ/mol/nm.
constexpr double kFdStep = 1e-6;
constexpr double kFdAtol = 1e-4;
constexpr double kFdRtolOfMax = 1e-6;

void expect_fd_gradient(const ForceField& ff, const std::vector<double>& x, unsigned terms,
                        const char* what) {
    std::vector<double> g(x.size());
    molecule_energy_reference(ff, x.data(), g.data(), terms);
    std::vector<double> fd(x.size());
    std::vector<double> xp = x;
    for (size_t k = 0; k < x.size(); ++k) {
        xp[k] = x[k] + kFdStep;
        const double ep = molecule_energy_reference(ff, xp.data(), nullptr, terms);
        xp[k] = x[k] - kFdStep;
        const double em = molecule_energy_reference(ff, xp.data(), nullptr, terms);
        xp[k] = x[k];
        fd[k] = (ep - em) / (2 * kFdStep);
    }
    double gmax = 0;
    for (double v : fd) gmax = std::max(gmax, std::fabs(v));
    ASSERT_TRUE(test::not_all_zero(g)) << what;
    EXPECT_ALL_CLOSE(g, fd, kFdAtol + kFdRtolOfMax * gmax, 0.0) << what;
}

TEST(MoleculeForceField, ForcesMatchFiniteDifferencesPerTerm) {
    const ForceField& ff = *aldp_force_field();
    auto gen = test::rng(7);
    const std::vector<double> x0 = aldp_positions();
    const struct {
        unsigned terms;
        const char* name;
    } cases[] = {
        {kTermBonds, "bonds"},         {kTermAngles, "angles"}, {kTermTorsions, "torsions"},
        {kTermNonbonded, "nonbonded"}, {kTermGB, "gb"},         {kTermAll, "total"}};
    for (int rep = 0; rep < 3; ++rep) {
        const std::vector<double> x = perturbed(x0, 0.01, gen);
        for (const auto& c : cases) expect_fd_gradient(ff, x, c.terms, c.name);
    }
}

TEST(MoleculeForceField, GbForcesMatchFiniteDifferencesWhenCompressed) {
    // Squeezing the molecule puts atoms inside other atoms' descreening spheres: the branches
    // of the OBC integral that a relaxed structure never reaches.
    const ForceField& ff = *aldp_force_field();
    auto gen = test::rng(8);
    std::vector<double> x = perturbed(aldp_positions(), 0.005, gen);
    for (double& v : x) v *= 0.55;
    expect_fd_gradient(ff, x, kTermGB, "gb compressed");
}

TEST(MoleculeForceField, EnergyIsInvariantUnderRigidMotionsAndMirroring) {
    const ForceField& ff = *aldp_force_field();
    auto gen = test::rng(9);
    const std::vector<double> x = perturbed(aldp_positions(), 0.01, gen);
    const double e = molecule_energy_reference(ff, x.data());
    const double shift[3] = {0.3, -1.2, 2.0};
    const std::vector<double> y = rotate(x, 0.7, -1.1, 2.3, shift);
    std::vector<double> m = x;
    mirror(m.data(), 22);
    // Only rounding differs: energies are sums of ~1e3 terms of size <= 1e3 kJ/mol.
    constexpr double kInvarianceRtol = 1e-10;
    EXPECT_NEAR(molecule_energy_reference(ff, y.data()), e, kInvarianceRtol * std::fabs(e) + 1e-9);
    EXPECT_NEAR(molecule_energy_reference(ff, m.data()), e, kInvarianceRtol * std::fabs(e) + 1e-9);
    // Born radii are positive and above the offset radius of their atom.
    const std::vector<double> born = obc_born_radii(ff, x.data());
    for (int i = 0; i < 22; ++i) EXPECT_GT(born[i], ff.gb_radii[i] - kObcDielectricOffset) << i;
}

TEST(MoleculeForceField, BatchedMatchesSingleAndFloatIsClose) {
    const ForceField& ff = *aldp_force_field();
    auto gen = test::rng(10);
    const std::vector<double> x0 = aldp_positions();
    for (int B : {0, 1, 5, 200}) {  // 200: split over threads (64 or more per thread)
        std::vector<double> xb;
        for (int b = 0; b < B; ++b) {
            const std::vector<double> x = perturbed(x0, 0.01, gen);
            xb.insert(xb.end(), x.begin(), x.end());
        }
        Tensor<double> xt = Tensor<double>::from_host(xb, Shape{B, 22, 3});
        Tensor<double> e(Shape{B}), f(Shape{B, 22, 3});
        molecule_energy_forces(ff, xt.cview(), e.view(), f.view());
        std::vector<double> e_ref(B), f_ref(xb.size());
        for (int b = 0; b < B; ++b) {
            e_ref[b] = molecule_energy_reference(ff, xb.data() + b * 66, f_ref.data() + b * 66);
            for (int k = 0; k < 66; ++k) f_ref[b * 66 + k] = -f_ref[b * 66 + k];
        }
        EXPECT_ALL_CLOSE(e.to_vector(), e_ref, 0.0, 0.0);
        EXPECT_ALL_CLOSE(f.to_vector(), f_ref, 0.0, 0.0);
        // float in, double inside: the input rounding (1e-7 relative of ~1 nm) moves stiff bond
        // energies (k ~ 3e5 kJ/mol/nm^2, stretch ~3e-3 nm) by ~1e-4 kJ/mol.
        std::vector<float> xf(xb.begin(), xb.end());
        Tensor<float> xft = Tensor<float>::from_host(xf, Shape{B, 22, 3});
        Tensor<float> ef(Shape{B});
        molecule_energy_forces(ff, xft.cview(), ef.view(), {});
        constexpr double kFloatInputAtol = 1e-2;
        EXPECT_ALL_CLOSE(ef.to_vector(), e_ref, kFloatInputAtol, 1e-6);
    }
    Tensor<double> bad(Shape{1, 21, 3}), e(Shape{1});
    EXPECT_THROW(molecule_energy_forces(ff, bad.cview(), e.view()), Error);
}

// Four points with dihedral phi (IUPAC: positive = clockwise looking from j to k), bond lengths
// and angles varied, then moved rigidly.
std::vector<double> dihedral_points(double phi, double theta1, double theta2, const double R[3]) {
    // j at origin, k on +z; i in the xz-plane; l rotated by phi about z.
    std::vector<double> x = {R[0] * std::sin(theta1),
                             0.0,
                             R[0] * std::cos(theta1),
                             0.0,
                             0.0,
                             0.0,
                             0.0,
                             0.0,
                             R[1],
                             R[2] * std::sin(theta2) * std::cos(phi),
                             R[2] * std::sin(theta2) * std::sin(phi),
                             R[1] - R[2] * std::cos(theta2)};
    return x;
}

TEST(MoleculeAnalysis, DihedralsOfConstructedConfigurations) {
    auto gen = test::rng(11);
    std::uniform_real_distribution<double> u(-kPi, kPi), ang(0.6, 2.5), len(0.1, 0.2);
    // atan2 of well-conditioned vectors: round-off only.
    constexpr double kAngleAtol = 1e-12;
    for (int rep = 0; rep < 200; ++rep) {
        const double phi = u(gen);
        const double R[3] = {len(gen), len(gen), len(gen)};
        const std::vector<double> x = dihedral_points(phi, ang(gen), ang(gen), R);
        const double shift[3] = {u(gen), u(gen), u(gen)};
        const std::vector<double> y = rotate(x, u(gen), u(gen), u(gen), shift);
        EXPECT_NEAR(dihedral_angle(y.data(), 0, 1, 2, 3), phi, kAngleAtol) << rep;
        // Reversing the atom order leaves the dihedral unchanged; the mirror image negates it.
        EXPECT_NEAR(dihedral_angle(y.data(), 3, 2, 1, 0), phi, kAngleAtol) << rep;
        std::vector<double> m = y;
        mirror(m.data(), 4);
        EXPECT_NEAR(dihedral_angle(m.data(), 0, 1, 2, 3), -phi, kAngleAtol) << rep;
    }
    // Cis and trans.
    const double R[3] = {0.15, 0.15, 0.15};
    EXPECT_NEAR(dihedral_angle(dihedral_points(0.0, 1.9, 1.9, R).data(), 0, 1, 2, 3), 0.0,
                kAngleAtol);
    EXPECT_NEAR(std::fabs(dihedral_angle(dihedral_points(kPi, 1.9, 1.9, R).data(), 0, 1, 2, 3)),
                kPi, kAngleAtol);
}

TEST(MoleculeAnalysis, AldpPhiPsiOfTheMinimisedStructure) {
    // tools/make_aldp_system.py reports phi -77.5, psi -14.7 degrees for the minimised structure;
    // the PDB file rounds coordinates to 1e-4 nm, which moves the angles by < 0.1 degree.
    const std::vector<double> x = aldp_positions();
    double phi, psi;
    aldp_phi_psi(x.data(), 1, &phi, &psi);
    constexpr double kPdbRoundingDeg = 0.1;
    EXPECT_NEAR(phi * 180 / kPi, -77.5, kPdbRoundingDeg);
    EXPECT_NEAR(psi * 180 / kPi, -14.7, kPdbRoundingDeg);
}

TEST(MoleculeAnalysis, ChiralityAndMirrorImages) {
    const std::vector<double> l = aldp_positions();
    EXPECT_TRUE(aldp_is_l(l.data()));
    std::vector<double> d = l;
    mirror(d.data(), 22);
    EXPECT_FALSE(aldp_is_l(d.data()));
    // Swapping HA and CB also inverts the stereocentre (a D structure that is not a mirror image).
    std::vector<double> swapped = l;
    for (int a = 0; a < 3; ++a) std::swap(swapped[3 * 9 + a], swapped[3 * kAldpCB + a]);
    EXPECT_FALSE(aldp_is_l(swapped.data()));
    // Rigid motions keep the handedness.
    const double shift[3] = {1, 2, 3};
    EXPECT_TRUE(aldp_is_l(rotate(l, 2.0, 0.4, -1.3, shift).data()));
    EXPECT_FALSE(aldp_is_l(rotate(d, 2.0, 0.4, -1.3, shift).data()));

    // A batch L, D, L, swapped: the two D ones are mirrored and flagged.
    std::vector<double> batch;
    const std::vector<double>* parts[] = {&l, &d, &l, &swapped};
    for (const std::vector<double>* x : parts) batch.insert(batch.end(), x->begin(), x->end());
    uint8_t is_d[4];
    EXPECT_EQ(aldp_fix_chirality(batch.data(), 4, is_d), 2);
    EXPECT_EQ(is_d[0], 0);
    EXPECT_EQ(is_d[1], 1);
    EXPECT_EQ(is_d[2], 0);
    EXPECT_EQ(is_d[3], 1);
    for (int b = 0; b < 4; ++b) EXPECT_TRUE(aldp_is_l(batch.data() + 66 * b)) << b;
    // The mirrored D structure is the original exactly.
    EXPECT_EQ(std::vector<double>(batch.begin() + 66, batch.begin() + 132), l);
    // phi changes sign under mirroring.
    double phi_l, phi_d;
    aldp_phi_psi(l.data(), 1, &phi_l, nullptr);
    aldp_phi_psi(d.data(), 1, &phi_d, nullptr);
    EXPECT_DOUBLE_EQ(phi_d, -phi_l);
}

TEST(MoleculeAnalysis, AtomTypesShareOnlyMethylHydrogens) {
    const std::vector<int> t = aldp_atom_types();
    ASSERT_EQ(t.size(), 22u);
    EXPECT_EQ(std::set<int>(t.begin(), t.end()).size(), 16u);
    EXPECT_EQ(*std::max_element(t.begin(), t.end()), 15);
    const std::set<std::set<int>> methyls = {{0, 2, 3}, {11, 12, 13}, {19, 20, 21}};
    const PdbStructure s = aldp_structure();
    for (int i = 0; i < 22; ++i) {
        for (int j = i + 1; j < 22; ++j) {
            bool same_methyl = false;
            for (const auto& m : methyls) same_methyl |= m.count(i) && m.count(j);
            EXPECT_EQ(t[i] == t[j], same_methyl) << i << " " << j;
            if (same_methyl) {
                EXPECT_EQ(s.elements[i], "H");
                EXPECT_EQ(s.residue_ids[i], s.residue_ids[j]);
            }
        }
    }
}

TEST(MoleculeSystem, AldpIsABuiltInSystem) {
    const System s = make_system("aldp");
    EXPECT_EQ(s.kind, PotentialKind::molecule);
    EXPECT_EQ(s.n, 22);
    EXPECT_EQ(s.d, 3);
    EXPECT_DOUBLE_EQ(s.kT, 0.00831446261815324 * 300.0);
    EXPECT_EQ(s.atom_types, aldp_atom_types());
    // (System::num_types() is not exported from the library, so count here.)
    EXPECT_EQ(*std::max_element(s.atom_types.begin(), s.atom_types.end()) + 1, 16);
    ASSERT_TRUE(s.force_field);
    auto gen = test::rng(12);
    const int B = 3;
    std::vector<double> x;
    for (int b = 0; b < B; ++b) {
        const std::vector<double> xb = perturbed(aldp_positions(), 0.01, gen);
        x.insert(x.end(), xb.begin(), xb.end());
    }
    Tensor<double> xt = Tensor<double>::from_host(x, Shape{B, 22, 3});
    Tensor<double> u(Shape{B}), f(Shape{B, 22, 3});
    energy_forces(s, xt.cview(), u.view(), f.view());
    const std::vector<double> uh = u.to_vector(), fh = f.to_vector();
    for (int b = 0; b < B; ++b) {
        std::vector<double> g(66);
        const double e = energy_reference(s, x.data() + 66 * b, g.data());
        EXPECT_DOUBLE_EQ(e, molecule_energy_reference(*s.force_field, x.data() + 66 * b));
        EXPECT_NEAR(uh[b], e / s.kT, 1e-12 * std::fabs(e / s.kT));
        for (int k = 0; k < 66; ++k) EXPECT_DOUBLE_EQ(fh[66 * b + k], -g[k]);
    }
    double lap = 0;
    EXPECT_THROW(energy_reference(s, x.data(), nullptr, &lap), Error);
    EXPECT_THROW(pair_potential(s, 1.0, &lap), Error);
}

TEST(MoleculeAnalysis, PhiFreeEnergyDifference) {
    // 3 of 4 samples at phi > 0, the same in every block: delta_f = -ln 3 exactly, no spread.
    std::vector<double> phi;
    for (int i = 0; i < 400; ++i) phi.push_back(i % 4 == 0 ? -1.0 : 1.0);
    FreeEnergyDifference r = phi_free_energy_difference(phi.data(), nullptr, 400, 10);
    EXPECT_NEAR(r.delta_f, -std::log(3.0), 1e-12);
    EXPECT_NEAR(r.error, 0.0, 1e-12);
    EXPECT_EQ(r.n_pos, 300);
    EXPECT_EQ(r.n_neg, 100);
    // Weights: the phi < 0 samples weigh 6 times more (log weights shifted by a large constant,
    // which must not overflow): delta_f = -ln(300 / 600) = ln 2.
    std::vector<double> lw(400);
    for (int i = 0; i < 400; ++i) lw[i] = 1000.0 + (phi[i] < 0 ? std::log(6.0) : 0.0);
    r = phi_free_energy_difference(phi.data(), lw.data(), 400, 10);
    EXPECT_NEAR(r.delta_f, std::log(2.0), 1e-12);
    // Independent samples with P(phi > 0) = 0.2: delta_f = ln 4, and the block error estimates
    // 1/sqrt(N p (1-p)) = 0.025. 50 blocks give the error to ~10% (relative); allow 40%.
    auto gen = test::rng(13);
    std::bernoulli_distribution pos(0.2);
    const int N = 10000;
    std::vector<double> iid(N);
    for (double& v : iid) v = pos(gen) ? 0.5 : -0.5;
    r = phi_free_energy_difference(iid.data(), nullptr, N, 50);
    const double expected_error = 1.0 / std::sqrt(N * 0.2 * 0.8);
    EXPECT_NEAR(r.error, expected_error, 0.4 * expected_error);
    EXPECT_NEAR(r.delta_f, std::log(4.0), 5 * expected_error);
    // One region empty: infinite.
    const std::vector<double> all_neg(10, -1.0);
    EXPECT_TRUE(std::isinf(phi_free_energy_difference(all_neg.data(), nullptr, 10).delta_f));
    EXPECT_THROW(phi_free_energy_difference(all_neg.data(), nullptr, 0), Error);
}

TEST(MoleculeAnalysis, RamachandranFigure) {
    RamachandranPanel md{
        "MD", {-1.45, -1.40, 1.0}, {1.15, 1.2, -0.5}, {}};  // first two share bin (9, 24)
    RamachandranPanel rw{"reweighted", {-1.4, 2.0}, {1.2, 0.1}, {0.0, -50.0}};
    const std::string svg = ramachandran_svg({md, rw}, 36);
    EXPECT_EQ(svg.rfind("<svg", 0), 0u);
    EXPECT_NE(svg.find("MD (3)"), std::string::npos);
    EXPECT_NE(svg.find("reweighted (2)"), std::string::npos);
    EXPECT_NE(svg.find("</svg>"), std::string::npos);
    // Filled bins: 2 distinct ones in MD (two samples share a bin) + 2 reweighted = 4 shaded cells.
    size_t cells = 0;
    for (size_t pos = svg.find("fill=\"rgb("); pos != std::string::npos;
         pos = svg.find("fill=\"rgb(", pos + 1))
        ++cells;
    EXPECT_EQ(cells, 4u);
    RamachandranPanel bad{"bad", {0.0}, {}, {}};
    EXPECT_THROW(ramachandran_svg({bad}), Error);
    const std::string path = test::temp_path("rama.svg");
    write_ramachandran_svg(path, {md});
    EXPECT_EQ(read_file(path), ramachandran_svg({md}));
    std::remove(path.c_str());
}

TEST(MoleculePdb, ReadsTheAldpStructure) {
    const PdbStructure s = aldp_structure();
    ASSERT_EQ(s.n_atoms(), 22);
    EXPECT_EQ(s.atom_names[kAldpN], "N");
    EXPECT_EQ(s.atom_names[kAldpCA], "CA");
    EXPECT_EQ(s.atom_names[kAldpC], "C");
    EXPECT_EQ(s.atom_names[kAldpCB], "CB");
    EXPECT_EQ(s.residue_names[4], "ACE");
    EXPECT_EQ(s.residue_names[16], "NME");
    EXPECT_THROW(read_pdb(test::temp_path("missing.pdb")), Error);
}

}  // namespace
}  // namespace eqflow

namespace eqflow {
namespace {

// Two frames of the alanine-dipeptide structure (the second shifted and scaled), written as PDB
// and DCD trajectories and read back: the PDB by the library's own reader, model by model; the
// DCD by an independent reader of the CHARMM layout written here from the format's description.
TEST(MoleculeTrajectory, PdbAndDcdRoundTrip) {
    const PdbStructure top = aldp_structure();
    std::vector<double> x = top.positions;
    for (double v : top.positions) x.push_back(1.1 * v + 0.25);
    const std::string pdb = format_pdb_trajectory(top, x.data(), 2);
    size_t begin = 0;
    for (int f = 0; f < 2; ++f) {
        const size_t model = pdb.find("MODEL ", begin), end = pdb.find("ENDMDL", model);
        ASSERT_NE(end, std::string::npos);
        const PdbStructure s = parse_pdb(pdb.substr(model, end - model), "trajectory");
        EXPECT_EQ(s.atom_names, top.atom_names);
        EXPECT_EQ(s.residue_names, top.residue_names);
        EXPECT_EQ(s.residue_ids, top.residue_ids);
        EXPECT_EQ(s.elements, top.elements);
        // 3 decimals of Angstrom: within half of 1e-4 nm (plus the float formatting).
        for (int k = 0; k < 66; ++k) EXPECT_NEAR(s.positions[k], x[66 * f + k], 5.1e-5);
        begin = end;
    }
    EXPECT_EQ(pdb.substr(pdb.size() - 4), "END\n");

    const std::string dcd = format_dcd(x.data(), 2, 22, "test");
    size_t at = 0;
    auto record = [&](std::string* body) {
        int32_t size = 0, again = 0;
        std::memcpy(&size, dcd.data() + at, 4);
        *body = dcd.substr(at + 4, static_cast<size_t>(size));
        std::memcpy(&again, dcd.data() + at + 4 + size, 4);
        EXPECT_EQ(size, again);
        at += 8 + static_cast<size_t>(size);
    };
    std::string head, title, natom, axis;
    record(&head);
    ASSERT_EQ(head.size(), 84u);
    EXPECT_EQ(head.substr(0, 4), "CORD");
    int32_t icntrl[20];
    std::memcpy(icntrl, head.data() + 4, sizeof icntrl);
    EXPECT_EQ(icntrl[0], 2);    // frames
    EXPECT_EQ(icntrl[10], 0);   // no unit cell
    EXPECT_EQ(icntrl[19], 24);  // CHARMM version
    record(&title);
    record(&natom);
    int32_t n = 0;
    std::memcpy(&n, natom.data(), 4);
    EXPECT_EQ(n, 22);
    for (int f = 0; f < 2; ++f)
        for (int k = 0; k < 3; ++k) {
            record(&axis);
            ASSERT_EQ(axis.size(), 88u);
            for (int i = 0; i < 22; ++i) {
                float v;
                std::memcpy(&v, axis.data() + 4 * i, 4);
                EXPECT_FLOAT_EQ(v, static_cast<float>(10.0 * x[66 * f + 3 * i + k]));
            }
        }
    EXPECT_EQ(at, dcd.size());
    // Coordinates the formats cannot hold are errors, not broken files.
    std::vector<double> far = top.positions;
    far[0] = 2000.0;  // nm: 20000 A does not fit 8.3f
    EXPECT_THROW(format_pdb_trajectory(top, far.data(), 1), Error);
    far[0] = std::nan("");
    EXPECT_THROW(format_dcd(far.data(), 1, 22, "t"), Error);
}

}  // namespace
}  // namespace eqflow
