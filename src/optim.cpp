// Adam, EMA and the learning-rate schedule: see eqflow/optim.h.
#include "eqflow/optim.h"

#include <cmath>

#include "common/train_math.h"
#include "eqflow/error.h"

namespace eqflow {

void adam_update(const AdamOptions& options, double lr, int64_t count, double* params,
                 const double* grad, AdamState& state) {
    EQFLOW_CHECK(count >= 0, "adam_update: negative parameter count");
    if (state.m.empty() && state.v.empty()) {
        state.m.assign(static_cast<size_t>(count), 0.0);
        state.v.assign(static_cast<size_t>(count), 0.0);
    }
    EQFLOW_CHECK(static_cast<int64_t>(state.m.size()) == count &&
                     static_cast<int64_t>(state.v.size()) == count,
                 "adam_update: optimiser state holds " << state.m.size() << " moments for " << count
                                                       << " parameters");
    const double k = static_cast<double>(state.step + 1);
    const double c1 = 1.0 - std::pow(options.beta1, k);
    const double c2 = 1.0 - std::pow(options.beta2, k);
    // The element rule is shared with the device optimiser (src/common/train_math.h).
    for (int64_t i = 0; i < count; ++i)
        train_math::adam_element(options.beta1, options.beta2, options.eps, lr, c1, c2, grad[i],
                                 state.m[static_cast<size_t>(i)], state.v[static_cast<size_t>(i)],
                                 params[i]);
    state.step += 1;
}

void ema_update(double decay, int64_t count, const double* params, double* shadow) {
    for (int64_t i = 0; i < count; ++i) shadow[i] = decay * shadow[i] + (1.0 - decay) * params[i];
}

double scheduled_learning_rate(double lr, int64_t step, int64_t drop_step, double factor) {
    return step >= drop_step ? lr * factor : lr;
}

bool all_finite(const double* values, int64_t count) {
    for (int64_t i = 0; i < count; ++i)
        if (!std::isfinite(values[i])) return false;
    return true;
}

}  // namespace eqflow
