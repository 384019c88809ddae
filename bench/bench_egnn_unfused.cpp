// The UNFUSED EGNN forward baseline (bench/egnn_unfused.cu: edge tensors [B n (n-1)][H] in
// device memory, cuBLAS SGEMM for W2 / Wc1 and the per-node products, elementwise kernels in
// between) at the DW4, LJ13 and LJ55 default sizes for B = 256 and 1024: the same names, sizes
// and FLOP formula (bench/egnn_flops.h) as BM_EgnnForward_CUDA of bench_egnn_gpu, so that
// tools/compare_bench.py --unfused prints fused/unfused ratios. Also reports the device memory
// the baseline holds (device_MB). Its correctness against the CPU reference is tested in
// tests/test_egnn_unfused_gpu.cpp. Timing: the device is synchronised after every iteration.
#include <benchmark/benchmark.h>

#include <exception>
#include <random>
#include <string>
#include <vector>

#include "egnn_flops.h"
#include "egnn_unfused.h"
#include "eqflow/device.h"
#include "eqflow/egnn.h"
#include "eqflow/systems.h"

namespace {

void BM_EgnnForward_Unfused(benchmark::State& state, const char* name) {
    if (eqflow::bench::skip_without_gpu(state)) return;
    const int64_t B = state.range(0);
    const eqflow::System s = eqflow::make_system(name);
    const eqflow::EgnnModel model = eqflow::bench::benchmark_model(name);
    // The inputs of bench_egnn_gpu's Setup: N(0, 1) coordinates from mt19937_64(2), t = b / B.
    std::mt19937_64 gen(2);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<float> x(static_cast<size_t>(B * s.n * s.d)), t(static_cast<size_t>(B));
    for (auto& v : x) v = dist(gen);
    for (size_t b = 0; b < t.size(); ++b) t[b] = static_cast<float>(b) / B;
    try {
        eqflow::bench::EgnnUnfused net(model, B);
        net.set_input(x.data(), t.data(), B);
        net.forward(B);  // warm-up: cuBLAS heuristics and kernel loading
        net.synchronize();
        for (auto _ : state) {
            net.forward(B);
            net.synchronize();
        }
        const double flops = eqflow::bench::egnn_forward_flops(model.config) * B;
        state.SetItemsProcessed(state.iterations() * B);
        state.counters["FLOP/s"] =
            benchmark::Counter(flops * state.iterations(), benchmark::Counter::kIsRate);
        state.counters["fp32_peak_frac"] =
            benchmark::Counter(flops * state.iterations() / 67e12, benchmark::Counter::kIsRate);
        state.counters["device_MB"] = static_cast<double>(net.device_bytes()) / 1e6;
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

}  // namespace

#define EQFLOW_UNFUSED_BENCH(sys)                        \
    BENCHMARK_CAPTURE(BM_EgnnForward_Unfused, sys, #sys) \
        ->Arg(256)                                       \
        ->Arg(1024)                                      \
        ->UseRealTime()                                  \
        ->Unit(benchmark::kMillisecond);

EQFLOW_UNFUSED_BENCH(dw4)
EQFLOW_UNFUSED_BENCH(lj13)
EQFLOW_UNFUSED_BENCH(lj55)

BENCHMARK_MAIN();
