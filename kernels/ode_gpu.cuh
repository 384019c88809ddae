// kernels/ode_gpu.cuh: the per-sample bookkeeping kernels of the device ODE integrator
// (src/ode_gpu.cpp drives them; the arithmetic is src/common/ode_step.h).
//
// Every kernel works on a compact list of active samples: idx [m] (device) holds the chunk rows
// b of the samples still integrating, in increasing order. Field inputs and outputs are compact
// too (row r of xf / tf / vf / divf belongs to sample idx[r]), so the EGNN field only ever sees
// the m active rows. Launchers take a stream and never allocate.
#pragma once

#include <cstdint>

#include "common/ode_step.h"
#include "eqflow/device.h"

namespace eqflow::cuda {

enum class OdeOp {
    gather,            // xf[r] = float(y[b][:D]), tf[r] = float(t[b])
    scatter,           // k[stage][b] = [v, div, |v|] from vf[r], divf[r]
    hairer_trial,      // ode_step::hairer_trial into xf[r], tf[r]
    hairer_finish,     // ode_step::hairer_finish
    given_first_step,  // ode_step::given_first_step
    check_start,       // ode_step::check_start
    dopri5_stage,      // ode_step::dopri5_stage(stage) into xf[r], tf[r]
    dopri5_finish,     // ode_step::dopri5_finish
    fixed_stage,       // ode_step::fixed_stage(stage, h) into xf[r]; tf[r] = float(t_stage)
    fixed_update,      // ode_step::fixed_update(rk4, h)
    fixed_check_end,   // ode_step::fixed_check_end
};

struct OdeOpArgs {
    int stage = 0;
    bool rk4 = false;
    double h = 0.0;               // fixed-step size (signed)
    double t_stage = 0.0;         // fixed-step stage time
    float* xf = nullptr;          // [m][D] field input
    float* tf = nullptr;          // [m]
    const float* vf = nullptr;    // [m][D] field output
    const float* divf = nullptr;  // [m]
};

// One thread per active sample r < m (sample idx[r]).
void ode_per_sample(OdeOp op, const ode_step::Chunk& chunk, const ode_step::Params& params,
                    const int* idx, int64_t m, const OdeOpArgs& args, Stream stream);

// Samples b < B start at x [B][D] (device, double); idx = 0, 1, ..., B-1.
void ode_init(const ode_step::Chunk& chunk, const ode_step::Params& params, int64_t B,
              const double* x, int* idx, Stream stream);

// idx [count] = the b < B without kDone, in increasing order; *count (device) receives count.
void ode_compact(const int* flags, int64_t B, int* idx, int* count, Stream stream);

}  // namespace eqflow::cuda
