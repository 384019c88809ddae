// tests/train_test_util.h: what the training tests share: DW4 training data, and the float32
// Adam check (its inputs and error budget) that test_train_math runs on the host and
// test_train_gpu on the device.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "eqflow/mcmc.h"
#include "eqflow/systems.h"
#include "eqflow/trainer.h"
#include "test_util.h"

namespace eqflow::test {

// count DW4 configurations from the equilibrium sampler (one thread, 200 burn-in steps).
inline std::vector<double> dw4_data(int64_t count, uint64_t seed) {
    McmcOptions mo;
    mo.samples = count;
    mo.seed = seed;
    mo.burn_in = 200;
    mo.threads = 1;
    return sample_equilibrium(make_system("dw4"), mo);
}

// The tiny DW4 run of the trainer tests: an EGNN of H = 8 and one layer, batch 8, EMA 0.99,
// eqot, 250 epochs (72 samples: 65 train / 7 validation, batch 8 -> 8 steps per epoch -> 2000
// steps); no output directory.
inline TrainOptions tiny_dw4_options() {
    TrainOptions o;
    o.objective = CouplingKind::eqot;
    o.epochs = 250;
    o.batch = 8;
    o.hidden = 8;
    o.layers = 1;
    o.seed = 42;
    o.ema_decay = 0.99;
    o.threads = 1;
    o.log_every = 100;
    return o;
}

// The float32-storage Adam element against adam_update in double over kAdamSteps steps on the
// same float32 gradients (|g| in [1e-3, 1]). Error budget: each step rounds p, m and v to float32
// once (2^-24 ~ 6e-8 relative). p: the roundings add up to kAdamSteps * 2^-24 * max|p| over the
// run, and |p| changes by at most lr a step -> rtol 1e-6 (2x kAdamSteps = 8 half-ulps). The
// update: the m error (<= 2^-24 k max|g| after bias correction at update k) over sqrt(v_hat) >=
// max|g| / sqrt(k) gives <= 2^-24 k^1.5 lr at update k, summed over 8 updates <= 5e-6 lr -> atol
// 1e-5 lr. m: absolute error <= 2^-24 x (sum of 0.9^j) x max|g| < 1e-6 (m can cancel to ~0, so
// absolute). v: a positive sum, relative error <= kAdamSteps * 2^-24. A wrong rule (bias
// correction, betas, eps) moves p by O(lr): five orders of magnitude above these tolerances.
constexpr int kAdamSteps = 8;
constexpr double kAdamRtol = 1e-6;
constexpr double kAdamAtolPerLr = 1e-5;
constexpr double kMomentAtol = 1e-6;

// The check's inputs, float32 values: P parameters uniform in [-1, 1], then for each of the
// kAdamSteps steps P gradients with |g| in [1e-3, 1] and random signs.
struct AdamInputs {
    std::vector<float> p;
    std::vector<std::vector<float>> g;
};

inline AdamInputs random_adam_inputs(int64_t P, uint64_t salt) {
    auto gen = rng(salt);
    std::uniform_real_distribution<double> mag(1e-3, 1.0), val(-1.0, 1.0);
    AdamInputs in;
    in.p.resize(static_cast<size_t>(P));
    for (float& x : in.p) x = static_cast<float>(val(gen));
    in.g.assign(kAdamSteps, std::vector<float>(static_cast<size_t>(P)));
    for (std::vector<float>& g : in.g)
        for (float& x : g) x = static_cast<float>((val(gen) < 0 ? -1 : 1) * mag(gen));
    return in;
}

}  // namespace eqflow::test
