// src/cpu/egnn_lanes.h: the fast CPU backend's reverse mode of the EGNN's exact divergence
// (src/cpu/egnn_lanes.cpp): the reference's forward-over-reverse pass (src/cpu/egnn_reverse.h)
// in float32 with one direction per SIMD lane. No SIMD type appears here: the .cpp is compiled
// with the build machine's vector width, its callers need not be.
#pragma once

#include <cstdint>

#include "common/egnn_offsets.h"
#include "eqflow/egnn.h"

namespace eqflow::cpu {

// `rows` samples x [rows][n][d] at times t [rows] with upstream gradients g [rows]:
// grad [P] (double) += sum_b g_b d div v(x_b) / dparams; dL_dx [rows][n][d] (nullable) =
// g_b d div v(x_b) / dx_b. params [P]: the fast field's float parameters.
void egnn_divergence_backward_lanes(const EgnnConfig& config, const EgnnOffsets& off,
                                    const float* params, int64_t rows, const float* x,
                                    const float* t, const float* g, double* grad, float* dL_dx);

}  // namespace eqflow::cpu
