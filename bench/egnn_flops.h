// bench/egnn_flops.h: the FLOP count of one EGNN forward pass, shared by the fused
// (bench_egnn_gpu) and unfused (bench_egnn_unfused) benchmarks so that their FLOP/s compare.
#pragma once

#include "eqflow/egnn.h"

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

}  // namespace eqflow::bench
