// src/cpu/egnn_cpu.h: CPU reference of the EGNN vector field (docs/design.md section 4), one sample
// at a time, double precision, plain loops. The public entry points in src/egnn.cpp check the
// arguments and loop over the batch.
#pragma once

#include <cstdint>
#include <vector>

#include "common/egnn_offsets.h"
#include "cpu/dual.h"
#include "eqflow/egnn.h"

namespace eqflow::cpu {

using ::eqflow::egnn_offsets;
using ::eqflow::EgnnOffsets;

// One sample: x [n][d], time t -> v [n][d] (mean-free).
void egnn_forward_one(const EgnnConfig& config, const EgnnOffsets& off, const double* params,
                      const double* x, double t, double* v);

// One sample: dL_dparams [P] += dL/dparams; dL_dx [n][d] = dL/dx (nullable).
void egnn_backward_one(const EgnnConfig& config, const EgnnOffsets& off, const double* params,
                       const double* x, double t, const double* dL_dv, double* dL_dparams,
                       double* dL_dx);

// Forward mode, one sample, K tangent directions sharing one primal pass:
// xdot [K][n][d] -> vdot [K][n][d] = J_v(x) xdot[k]; v [n][d] (nullable).
void egnn_jvp_one(const EgnnConfig& config, const EgnnOffsets& off, const double* params,
                  const double* x, double t, int K, const double* xdot, double* v, double* vdot);

// The n*d unit tangent directions [nd][nd] (the identity): the exact divergence and the dense
// Jacobian are forward mode along all of them.
std::vector<double> egnn_unit_tangents(int nd);

// The exact divergence of one sample, the trace of J_v: forward mode along the unit tangents
// `eye` (egnn_unit_tangents) with their images in vdot [nd][nd] (scratch); v [n][d] nullable.
double egnn_divergence_one(const EgnnConfig& config, const EgnnOffsets& off, const double* params,
                           const double* x, double t, const double* eye, double* vdot, double* v);

// Reverse mode of the exact divergence of one sample (forward over reverse, see the .cpp): the
// tangent parts of dp [P] (duals, scratch that accumulates across calls) += g d div / dparams;
// dL_dx [n][d] = g d div / dx (nullable). The caller reads the tangents of dp when done.
void egnn_divergence_backward_one(const EgnnConfig& config, const EgnnOffsets& off,
                                  const double* params, const double* x, double t, double g,
                                  Dual* dp, double* dL_dx);

}  // namespace eqflow::cpu
