// The EGNN vector field on the CPU reference path (double, one thread): forward, backward and
// the exact divergence at the DW4, LJ13 and LJ55 default sizes (docs/design.md section 4). These
// are the baseline the CUDA kernels are measured against. Reported: `per_sample` (CPU seconds per
// configuration) and an estimated FLOP/s.
//
// FLOP model (multiply-adds count 2), per sample and layer:
//   forward:    n(n-1) edges x 2 H x H products (W2, Wc1) + n nodes x 5 H x H (P, Q, node MLP)
//   backward:   about 3x forward (the edge recomputation, then a transposed product and an outer
//               product per forward product)
//   divergence: forward + n*d tangents through every edge's two H x H products
#include <benchmark/benchmark.h>

#include <random>
#include <string>
#include <vector>

#include "eqflow/egnn.h"

namespace {

struct Size {
    const char* system;
    int n, d;
};

const Size kSizes[] = {{"dw4", 4, 2}, {"lj13", 13, 3}, {"lj55", 55, 3}};

double forward_flops(const eqflow::EgnnConfig& c) {
    const double n = c.n_particles, H = c.hidden;
    return c.layers * (n * (n - 1) * 4.0 * H * H + n * 10.0 * H * H);
}

struct Inputs {
    eqflow::EgnnConfig config;
    std::vector<double> params, x, t, w;
};

Inputs make_inputs(const Size& s, int64_t B) {
    Inputs in;
    in.config = eqflow::default_egnn_config(s.system, s.n, s.d);
    in.params = eqflow::egnn_init_parameters(in.config, 1);
    std::mt19937_64 gen(7);
    std::normal_distribution<double> dist(0.0, s.n == 4 ? 2.0 : 1.0);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    in.x.resize(static_cast<size_t>(B * s.n * s.d));
    for (double& v : in.x) v = dist(gen);
    in.w.resize(in.x.size());
    for (double& v : in.w) v = dist(gen);
    in.t.resize(static_cast<size_t>(B));
    for (double& v : in.t) v = u(gen);
    return in;
}

void report(benchmark::State& state, int64_t B, double flops_per_sample) {
    state.SetItemsProcessed(state.iterations() * B);
    // Seconds per configuration (printed with an SI prefix, e.g. "128us"), from the CPU time.
    state.counters["per_sample"] =
        benchmark::Counter(static_cast<double>(state.iterations() * B),
                           benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
    state.counters["FLOP/s"] =
        benchmark::Counter(flops_per_sample * static_cast<double>(state.iterations() * B),
                           benchmark::Counter::kIsRate);
}

void BM_EgnnForward_CPU(benchmark::State& state, Size s) {
    const int64_t B = state.range(0);
    const Inputs in = make_inputs(s, B);
    std::vector<double> v(in.x.size());
    for (auto _ : state) {
        eqflow::egnn_forward(in.config, in.params.data(), B, in.x.data(), in.t.data(), v.data());
        benchmark::DoNotOptimize(v.data());
    }
    report(state, B, forward_flops(in.config));
}

void BM_EgnnBackward_CPU(benchmark::State& state, Size s) {
    const int64_t B = state.range(0);
    const Inputs in = make_inputs(s, B);
    std::vector<double> g(in.params.size(), 0.0), gx(in.x.size());
    for (auto _ : state) {
        eqflow::egnn_backward(in.config, in.params.data(), B, in.x.data(), in.t.data(), in.w.data(),
                              g.data(), gx.data());
        benchmark::DoNotOptimize(g.data());
    }
    report(state, B, 3.0 * forward_flops(in.config));
}

void BM_EgnnDivergence_CPU(benchmark::State& state, Size s) {
    const int64_t B = state.range(0);
    const Inputs in = make_inputs(s, B);
    std::vector<double> v(in.x.size()), div(static_cast<size_t>(B));
    for (auto _ : state) {
        eqflow::egnn_divergence(in.config, in.params.data(), B, in.x.data(), in.t.data(), v.data(),
                                div.data());
        benchmark::DoNotOptimize(div.data());
    }
    const double n = s.n, H = in.config.hidden;
    const double tangent = in.config.layers * n * (n - 1) * s.n * s.d * 4.0 * H * H;
    report(state, B, forward_flops(in.config) + tangent);
}

}  // namespace

// Batch sizes keep one iteration between ~1 ms and ~1 s on one core.
BENCHMARK_CAPTURE(BM_EgnnForward_CPU, dw4, kSizes[0])->Arg(256)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_EgnnForward_CPU, lj13, kSizes[1])->Arg(32)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_EgnnForward_CPU, lj55, kSizes[2])->Arg(2)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_EgnnBackward_CPU, dw4, kSizes[0])->Arg(256)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_EgnnBackward_CPU, lj13, kSizes[1])->Arg(32)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_EgnnBackward_CPU, lj55, kSizes[2])->Arg(1)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_EgnnDivergence_CPU, dw4, kSizes[0])->Arg(64)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_EgnnDivergence_CPU, lj13, kSizes[1])->Arg(2)->Unit(benchmark::kMillisecond);
// One LJ55 divergence is n*d = 165 tangents through 7 layers: seconds; one iteration suffices.
BENCHMARK_CAPTURE(BM_EgnnDivergence_CPU, lj55, kSizes[2])
    ->Arg(1)
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
