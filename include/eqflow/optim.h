// eqflow/optim.h: the optimiser of flow-matching training (docs/design.md section 5): Adam with
// PyTorch's update rule and defaults of the paper (beta 0.9 / 0.999, eps 1e-8), the step-wise
// learning-rate drop, and an exponential moving average (EMA) of the weights.
//
// All state is plain vectors so that a checkpoint can store it and a resumed run continues
// bit-for-bit.
#pragma once

#include <cstdint>
#include <vector>

#include "eqflow/export.h"

namespace eqflow {

struct AdamOptions {
    double beta1 = 0.9;
    double beta2 = 0.999;
    double eps = 1e-8;
};

struct AdamState {
    int64_t step = 0;       // updates applied so far (bias correction uses step + 1)
    std::vector<double> m;  // first moment, one per parameter
    std::vector<double> v;  // second moment
};

// One Adam update (PyTorch's torch.optim.Adam without weight decay):
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  k = step + 1
//   p -= lr * (m / (1 - b1^k)) / (sqrt(v / (1 - b2^k)) + eps)
// `state` is sized on the first call (zeros). params and grad hold `count` values.
EQFLOW_API void adam_update(const AdamOptions& options, double lr, int64_t count, double* params,
                            const double* grad, AdamState& state);

// shadow = decay * shadow + (1 - decay) * params.
EQFLOW_API void ema_update(double decay, int64_t count, const double* params, double* shadow);

// The schedule of the paper's training: `lr` until step `drop_step`, then lr * factor.
EQFLOW_API double scheduled_learning_rate(double lr, int64_t step, int64_t drop_step,
                                          double factor = 0.1);

// True when every value is finite.
EQFLOW_API bool all_finite(const double* values, int64_t count);

}  // namespace eqflow
