// Batched energies + forces: configurations per second, pair evaluations per second, and the
// bytes moved (positions in, forces and energy out). CUDA timings synchronise the device after
// every iteration and use real time.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "eqflow/device.h"
#include "eqflow/systems.h"
#include "eqflow/tensor.h"

namespace {

// ~30 FLOP per ordered-pair evaluation (distance, powers, force accumulation).
constexpr double kFlopPerPair = 30.0;

std::vector<double> random_batch(const eqflow::System& s, int64_t B) {
    std::mt19937_64 gen(1);
    std::normal_distribution<double> dist(0.0,
                                          s.kind == eqflow::PotentialKind::double_well ? 2.0 : 1.0);
    std::vector<double> x(static_cast<size_t>(B * s.n * s.d));
    for (auto& v : x) v = dist(gen);
    return x;
}

template <class T>
void run(benchmark::State& state, const char* name, eqflow::Device device) {
    if (device == eqflow::Device::cuda && !eqflow::cuda_available()) {
        state.SkipWithError(("no GPU: " + eqflow::cuda_status()).c_str());
        return;
    }
    const eqflow::System s = eqflow::make_system(name);
    const int64_t B = state.range(0);
    const std::vector<double> xd = random_batch(s, B);
    const std::vector<T> xt(xd.begin(), xd.end());
    auto x = eqflow::Tensor<T>::from_host(xt, {B, s.n, s.d}, device);
    eqflow::Tensor<T> u({B}, device), f({B, s.n, s.d}, device);
    for (auto _ : state) {
        eqflow::energy_forces(s, x.cview(), u.view(), f.view());
        eqflow::synchronize();
    }
    const double pairs = static_cast<double>(B) * s.n * (s.n - 1);
    state.SetItemsProcessed(state.iterations() * B);
    state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(sizeof(T)) * B *
                            (2 * s.n * s.d + 1));
    state.counters["FLOP/s"] =
        benchmark::Counter(pairs * kFlopPerPair * state.iterations(), benchmark::Counter::kIsRate);
}

void BM_Energy_CPU(benchmark::State& state, const char* name) {
    run<double>(state, name, eqflow::Device::cpu);
}
void BM_Energy_CUDA(benchmark::State& state, const char* name) {
    run<float>(state, name, eqflow::Device::cuda);
}

}  // namespace

BENCHMARK_CAPTURE(BM_Energy_CPU, dw4, "dw4")->Arg(4096)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Energy_CPU, lj13, "lj13")->Arg(4096)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Energy_CPU, lj55, "lj55")->Arg(1024)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Energy_CUDA, dw4, "dw4")
    ->Arg(1 << 20)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Energy_CUDA, lj13, "lj13")
    ->Arg(1 << 20)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Energy_CUDA, lj55, "lj55")
    ->Arg(1 << 18)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
