// Molecular force field: the CUDA kernel against the CPU reference (label gpu), per term and in
// total, double and float, through molecule_energy_forces and through the `aldp` System.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "eqflow/molecule.h"
#include "eqflow/systems.h"
#include "eqflow/tensor.h"
#include "test_util.h"

namespace eqflow {
namespace {

std::vector<double> batch(int B, double noise, std::mt19937_64& gen) {
    const std::vector<double> x0 = aldp_structure().positions;
    std::normal_distribution<double> dist(0.0, noise);
    std::vector<double> x;
    for (int b = 0; b < B; ++b)
        for (double v : x0) x.push_back(v + dist(gen));
    return x;
}

double max_abs(const std::vector<double>& v) {
    double m = 0;
    for (double x : v) m = std::max(m, std::fabs(x));
    return m;
}

const unsigned kTerms[] = {kTermBonds,     kTermAngles, kTermTorsions,
                           kTermNonbonded, kTermGB,     kTermAll};

TEST(MoleculeGpu, DoubleMatchesCpu) {
    const ForceField& ff = *aldp_force_field();
    auto gen = test::rng(31);
    for (int B : {1, 7, 300}) {
        const std::vector<double> x = batch(B, 0.01, gen);
        Tensor<double> xc = Tensor<double>::from_host(x, Shape{B, 22, 3});
        Tensor<double> xg = xc.to(Device::cuda);
        for (unsigned terms : kTerms) {
            Tensor<double> ec(Shape{B}), fc(Shape{B, 22, 3});
            molecule_energy_forces(ff, xc.cview(), ec.view(), fc.view(), terms);
            Tensor<double> eg(Shape{B}, Device::cuda), fg(Shape{B, 22, 3}, Device::cuda);
            molecule_energy_forces(ff, xg.cview(), eg.view(), fg.view(), terms);
            const std::vector<double> f_ref = fc.to_vector();
            ASSERT_TRUE(test::not_all_zero(eg.to_vector()));
            // Double on both sides; the summation order (atomics) differs: 1e-10 relative.
            EXPECT_ALL_CLOSE(eg.to_vector(), ec.to_vector(), 1e-9, 1e-10)
                << "terms " << terms << " B=" << B;
            EXPECT_ALL_CLOSE(fg.to_vector(), f_ref, 1e-10 * max_abs(f_ref) + 1e-9, 0.0)
                << "terms " << terms;
        }
    }
}

TEST(MoleculeGpu, FloatIsCloseToCpu) {
    const ForceField& ff = *aldp_force_field();
    auto gen = test::rng(32);
    const int B = 257;
    const std::vector<double> x = batch(B, 0.01, gen);
    const std::vector<float> xf(x.begin(), x.end());
    // The reference gets the float-rounded positions, so only arithmetic precision is compared.
    const std::vector<double> xr(xf.begin(), xf.end());
    Tensor<double> xc = Tensor<double>::from_host(xr, Shape{B, 22, 3});
    Tensor<double> ec(Shape{B}), fc(Shape{B, 22, 3});
    molecule_energy_forces(ff, xc.cview(), ec.view(), fc.view());
    Tensor<float> xg = Tensor<float>::from_host(xf, Shape{B, 22, 3}).to(Device::cuda);
    Tensor<float> eg(Shape{B}, Device::cuda), fg(Shape{B, 22, 3}, Device::cuda);
    molecule_energy_forces(ff, xg.cview(), eg.view(), fg.view());
    // float32 terms (relative 6e-8) of up to ~1e3 kJ/mol, ~700 of them, partly cancelling
    // (Coulomb, GB): a few 1e-3 kJ/mol; 0.02 kJ/mol is 0.008 kT. Forces: intermediate values
    // reach ~1e4 kJ/mol/nm (stiff bonds), so 1e-4 of the largest component.
    constexpr double kFloatEnergyAtol = 0.02;
    constexpr double kFloatForceRtolOfMax = 1e-4;
    const std::vector<double> f_ref = fc.to_vector();
    EXPECT_ALL_CLOSE(eg.to_vector(), ec.to_vector(), kFloatEnergyAtol, 0.0);
    EXPECT_ALL_CLOSE(fg.to_vector(), f_ref, kFloatForceRtolOfMax * max_abs(f_ref), 0.0);
}

TEST(MoleculeGpu, AldpSystemReducedEnergies) {
    const System s = make_system("aldp");
    auto gen = test::rng(33);
    const int B = 33;
    const std::vector<double> x = batch(B, 0.01, gen);
    Tensor<double> xc = Tensor<double>::from_host(x, Shape{B, 22, 3});
    Tensor<double> uc(Shape{B}), fc(Shape{B, 22, 3});
    energy_forces(s, xc.cview(), uc.view(), fc.view());
    Tensor<double> xg = xc.to(Device::cuda);
    Tensor<double> ug(Shape{B}, Device::cuda), fg(Shape{B, 22, 3}, Device::cuda);
    energy_forces(s, xg.cview(), ug.view(), fg.view());
    EXPECT_ALL_CLOSE(ug.to_vector(), uc.to_vector(), 1e-9, 1e-10);
    const std::vector<double> f_ref = fc.to_vector();
    EXPECT_ALL_CLOSE(fg.to_vector(), f_ref, 1e-10 * max_abs(f_ref) + 1e-9, 0.0);
    Tensor<double> empty(Shape{0, 22, 3}, Device::cuda), ue(Shape{0}, Device::cuda);
    EXPECT_NO_THROW(energy_forces(s, empty.cview(), ue.view()));
}

}  // namespace
}  // namespace eqflow
