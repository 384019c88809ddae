// src/common/train_math.h: the per-row random draws and the per-parameter Adam arithmetic of
// flow-matching training, written once for the host and the device. The CPU trainer
// (src/trainer.cpp, src/optim.cpp) and the device step (kernels/train_step.cu) both call these
// functions, so the GPU path draws the same numbers and applies the same update rule as the CPU
// reference by construction rather than by a copy that could drift.
//
// Bit-identity of the draws: the Philox normals are bit-identical on both sides (eqflow/philox.h);
// the mean removal below uses only additions, one division and subtractions, each correctly
// rounded by IEEE 754 on both sides, and none of them can be contracted into an FMA. So a row
// drawn on the device equals the host's row bit for bit, except t under a time power A != 1,
// which goes through pow (CUDA's double pow is within 2 ulps, libm's within 1: t may differ by a
// few ulps).
//
// The Adam element is NOT bit-identical across host and device: nvcc may contract its a*b+c into
// FMAs and the device's pow() may differ from libm's in the last bit. The GPU path stores
// float32 anyway, so these 1e-16 relative differences are far below its rounding.
#pragma once

#include <math.h>

#include <cstdint>

#include "eqflow/export.h"
#include "eqflow/philox.h"

namespace eqflow::train_math {

// What changes from one training step to the next, in the memory of the step's device, so that a
// step's work is the same sequence of launches with the same arguments every time (the CUDA step
// is captured once as a graph and replayed: src/train_step.cpp): the batch's first position in
// the epoch order, its first Philox stream, and the learning rate.
struct StepArgs {
    int64_t first = 0;          // x1[b] = data[order[first + b]]
    uint64_t first_stream = 0;  // row b draws from Philox stream first_stream + b
    double lr = 0.0;            // Adam's learning rate of this step
};

// The training step's bookkeeping, one instance in the memory of the step's device (so that on
// the GPU no step needs the host to decide anything): the update reads `bad` to skip a
// non-finite step.
struct TrainScalars {
    double loss = 0.0;         // the last step's batch loss (NaN or inf when not finite)
    int bad = 0;               // the last step's loss or gradient was not finite: skipped
    int pad = 0;               // keeps the 8-byte fields below aligned
    int64_t adam_step = 0;     // Adam updates applied (the next update's bias uses + 1)
    int64_t skipped = 0;       // steps skipped so far
    double window_loss = 0.0;  // sum of the accepted steps' losses since the last reset
    int64_t window_count = 0;  // accepted steps since the last reset
};

// After a step's update: skipped += bad, or adam_step += 1 and the loss joins the window.
EQFLOW_HD inline void finish_step(TrainScalars& s) {
    if (s.bad) {
        s.skipped += 1;
    } else {
        s.adam_step += 1;
        s.window_loss += s.loss;
        s.window_count += 1;
    }
}

// x [n][d] <- x minus its particle mean, per dimension: the order of remove_mean (eqflow/flow.h),
// sum over particles in index order, one division by n, then subtraction.
EQFLOW_HD inline void remove_row_mean(int n, int d, double* x) {
    for (int a = 0; a < d; ++a) {
        double mean = 0.0;
        for (int i = 0; i < n; ++i) mean += x[i * d + a];
        mean /= n;
        for (int i = 0; i < n; ++i) x[i * d + a] -= mean;
    }
}

// The training time from its uniform draw u in [0, 1): t = u^(1/A), whose density is A t^(A-1)
// (Beta(A, 1)). A = 1 is the paper's t ~ U(0, 1), returned as u itself (no pow, so the default
// draws are the same bits as before the option existed); A > 1 puts more of the training near the
// data end t = 1, A < 1 near the prior end. pow may differ by a few ulps between host and device.
EQFLOW_HD inline double time_from_uniform(double u, double time_power) {
    return time_power == 1.0 ? u : pow(u, 1.0 / time_power);
}

// The prior sample x0 [n][d], the time t and the noise eps [n][d] of one training row, all from
// the one stream Philox(seed, stream): n*d normals, one uniform (t = time_from_uniform of it), n*d
// normals (when n*d is odd the spare normal of x0's last pair becomes eps[0]), then x0 and eps
// centred.
EQFLOW_HD inline void draw_row(uint64_t seed, uint64_t stream, int n, int d, double* x0, double* t,
                               double* eps, double time_power = 1.0) {
    Philox rng(seed, stream);
    const int nd = n * d;
    for (int k = 0; k < nd; ++k) x0[k] = rng.normal();
    *t = time_from_uniform(rng.uniform(), time_power);
    for (int k = 0; k < nd; ++k) eps[k] = rng.normal();
    remove_row_mean(n, d, x0);
    remove_row_mean(n, d, eps);
}

// One Adam element in double (PyTorch's rule, see eqflow/optim.h): c1 = 1 - b1^k and
// c2 = 1 - b2^k are the bias corrections of update k = step + 1.
EQFLOW_HD inline void adam_element(double b1, double b2, double eps, double lr, double c1,
                                   double c2, double g, double& m, double& v, double& p) {
    m = b1 * m + (1.0 - b1) * g;
    v = b2 * v + (1.0 - b2) * g * g;
    p -= lr * (m / c1) / (sqrt(v / c2) + eps);
}

// The same element with float32 storage (the device optimiser): the arithmetic runs in double
// from the stored floats, and the new p, m and v are rounded to float32 once each. So a step
// adds at most half an ulp of rounding to each stored value; the update itself is the double
// rule's to ~1e-16.
EQFLOW_HD inline void adam_element_f32(double b1, double b2, double eps, double lr, double c1,
                                       double c2, float g, float& m, float& v, float& p) {
    double md = m, vd = v, pd = p;
    adam_element(b1, b2, eps, lr, c1, c2, static_cast<double>(g), md, vd, pd);
    m = static_cast<float>(md);
    v = static_cast<float>(vd);
    p = static_cast<float>(pd);
}

}  // namespace eqflow::train_math
