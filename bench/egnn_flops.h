// bench/egnn_flops.h: what the GPU EGNN benchmarks share, so that they measure the same model
// and their FLOP/s compare: the FLOP count of one forward pass, the benchmarked model of a
// system, and the skip without a GPU (bench_egnn_gpu, bench_egnn_unfused).
#pragma once

#include <benchmark/benchmark.h>

#include <string>

#include "eqflow/device.h"
#include "eqflow/egnn.h"
#include "eqflow/systems.h"

namespace eqflow::bench {

// Matrix FLOPs of one forward pass of one sample (2 per multiply-add; activations ignored).
inline double egnn_forward_flops(const EgnnConfig& c) {
    const double n = c.n_particles, H = c.hidden, E = n * (n - 1);
    double f = 0;
    for (int l = 0; l < c.layers; ++l) {
        f += E * (4 * H * H + 8 * H);  // W2, Wc1 per edge, plus the per-edge vector work
        f += n * 4 * H * H;            // P = W1a h, Q = W1b h
        if (l + 1 < c.layers) f += n * 6 * H * H;  // node MLP
    }
    return f;
}

// The model every GPU EGNN benchmark times: the system's default configuration, parameters
// from seed 1.
inline EgnnModel benchmark_model(const std::string& system) {
    const System s = make_system(system);
    EgnnModel model;
    model.config = default_egnn_config(system, s.n, s.d);
    model.params = egnn_init_parameters(model.config, 1);
    return model;
}

// True (and the benchmark marked skipped with the reason) when no GPU is usable.
inline bool skip_without_gpu(benchmark::State& state) {
    if (cuda_available()) return false;
    state.SkipWithError(("no GPU: " + cuda_status()).c_str());
    return true;
}

}  // namespace eqflow::bench
