// Alanine dipeptide: eqflow's own batched force field (CPU reference, CUDA) against OpenMM one
// context call per configuration (Reference and CPU platforms), items = energy+force evaluations;
// and a long Langevin MD run reporting the average energies (the long counterpart of the MD test
// in tests/test_aldp_openmm.cpp). Benchmarks never validate; tests do.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <random>
#include <vector>

#include "eqflow/device.h"
#include "eqflow/molecule.h"
#include "eqflow/tensor.h"

namespace {

// Per configuration: 21 bonds, 36 angles, 41 torsions, ~170 LJ+Coulomb pairs, 462 ordered GB
// descreening pairs (twice: radii and chain rule), 231 GB pairs: ~3e4 FLOP.
constexpr double kFlopPerConfig = 3e4;

std::vector<double> perturbed_batch(int64_t B) {
    const std::vector<double> x0 = eqflow::aldp_structure().positions;
    std::mt19937_64 gen(1);
    std::normal_distribution<double> noise(0.0, 0.01);
    std::vector<double> x;
    x.reserve(static_cast<size_t>(B) * x0.size());
    for (int64_t b = 0; b < B; ++b)
        for (double v : x0) x.push_back(v + noise(gen));
    return x;
}

template <class T>
void own(benchmark::State& state, eqflow::Device device) {
    if (device == eqflow::Device::cuda && !eqflow::cuda_available()) {
        state.SkipWithError(("no GPU: " + eqflow::cuda_status()).c_str());
        return;
    }
    const eqflow::ForceField& ff = *eqflow::aldp_force_field();
    const int64_t B = state.range(0);
    const std::vector<double> xd = perturbed_batch(B);
    const std::vector<T> xt(xd.begin(), xd.end());
    auto x = eqflow::Tensor<T>::from_host(xt, {B, 22, 3}, device);
    eqflow::Tensor<T> e({B}, device), f({B, 22, 3}, device);
    for (auto _ : state) {
        eqflow::molecule_energy_forces(ff, x.cview(), e.view(), f.view());
        eqflow::synchronize();
    }
    state.SetItemsProcessed(state.iterations() * B);
    state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(sizeof(T)) * B *
                            (2 * 66 + 1));
    state.counters["FLOP/s"] =
        benchmark::Counter(kFlopPerConfig * B * state.iterations(), benchmark::Counter::kIsRate);
}

void BM_AldpEnergyForces_CPU(benchmark::State& state) {
    own<double>(state, eqflow::Device::cpu);
}
void BM_AldpEnergyForces_CUDA_f32(benchmark::State& state) {
    own<float>(state, eqflow::Device::cuda);
}
void BM_AldpEnergyForces_CUDA_f64(benchmark::State& state) {
    own<double>(state, eqflow::Device::cuda);
}

void openmm(benchmark::State& state, const char* platform) {
    if (!eqflow::openmm_available()) {
        state.SkipWithError("eqflow was built without OpenMM");
        return;
    }
    const int64_t B = state.range(0);
    const std::vector<double> x = perturbed_batch(B);
    std::vector<double> e(B), f(x.size());
    try {
        eqflow::OpenMMEvaluator omm(eqflow::aldp_data_dir() + "/aldp_system.xml", platform);
        for (auto _ : state) omm.evaluate(x.data(), B, e.data(), f.data());
    } catch (const std::exception& ex) {
        state.SkipWithError(ex.what());
        return;
    }
    state.SetItemsProcessed(state.iterations() * B);
}
void BM_AldpEnergyForces_OpenMMReference(benchmark::State& state) {
    openmm(state, "Reference");
}
void BM_AldpEnergyForces_OpenMMCPU(benchmark::State& state) {
    openmm(state, "CPU");
}

// Long MD: range(0) frames of 1 ps after 100 ps; counters: <U>, <K> and the kinetic temperature.
void BM_AldpLangevinMd(benchmark::State& state) {
    if (!eqflow::openmm_available()) {
        state.SkipWithError("eqflow was built without OpenMM");
        return;
    }
    eqflow::MdOptions opt;
    opt.samples = state.range(0);
    opt.platform = "Reference";
    eqflow::MdStats stats;
    for (auto _ : state)
        eqflow::openmm_langevin_md(eqflow::aldp_data_dir() + "/aldp_system.xml",
                                   eqflow::aldp_structure().positions, opt, &stats);
    state.SetItemsProcessed(state.iterations() *
                            (opt.samples * opt.steps_per_frame + opt.equilibration_steps));
    state.counters["U_mean_kJmol"] = stats.mean_potential;
    state.counters["K_mean_kJmol"] = stats.mean_kinetic;
    state.counters["T_kin_K"] = 2.0 * stats.mean_kinetic / (stats.dof * eqflow::kBoltzmannKJ);
}

}  // namespace

BENCHMARK(BM_AldpEnergyForces_CPU)->Arg(1024)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_AldpEnergyForces_OpenMMReference)->Arg(1024)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_AldpEnergyForces_OpenMMCPU)->Arg(256)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_AldpEnergyForces_CUDA_f32)->Arg(1 << 20)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_AldpEnergyForces_CUDA_f64)->Arg(1 << 20)->UseRealTime()->Unit(benchmark::kMillisecond);

// The long MD run (1 ns after 100 ps, ~1.5 minutes on the Reference platform) only when asked:
// EQFLOW_BENCH_LONG_MD=1 bench_aldp --benchmark_filter=LangevinMd
int main(int argc, char** argv) {
    if (const char* env = std::getenv("EQFLOW_BENCH_LONG_MD"); env && *env && *env != '0')
        benchmark::RegisterBenchmark("BM_AldpLangevinMd", BM_AldpLangevinMd)
            ->Arg(1000)
            ->Iterations(1)
            ->Unit(benchmark::kSecond);
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
