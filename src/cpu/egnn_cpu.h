// src/cpu/egnn_cpu.h: CPU reference of the EGNN vector field (DESIGN.md section 4), one sample
// at a time, double precision, plain loops. The public entry points in src/egnn.cpp check the
// arguments and loop over the batch.
#pragma once

#include <cstdint>
#include <vector>

#include "eqflow/egnn.h"

namespace eqflow::cpu {

// Offsets of every parameter tensor in the flat buffer (row-major PyTorch shapes [out][in]).
struct EgnnLayerOffsets {
    int64_t edge_w0, edge_b0;    // [H][2H+2], [H]: columns h_i | h_j | r_ij | a_ij
    int64_t edge_w2, edge_b2;    // [H][H], [H]
    int64_t node_w0, node_b0;    // [H][2H], [H]: columns h_i | sum_j m_ij
    int64_t node_w2, node_b2;    // [H][H], [H]
    int64_t coord_w0, coord_b0;  // [H][H], [H]
    int64_t coord_w2;            // [1][H], no bias
    int64_t att_w0 = -1;         // [1][H] (attention only)
    int64_t att_b0 = -1;         // [1]
};

struct EgnnOffsets {
    int64_t emb_w, emb_b;          // [H][F], [H]
    int64_t emb_out_w, emb_out_b;  // [F][H], [F]: unused by the field, kept for the state_dict
    std::vector<EgnnLayerOffsets> layers;
};

// Derived from egnn_parameter_layout(config), so there is one source of truth for the order.
EgnnOffsets egnn_offsets(const EgnnConfig& config);

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

}  // namespace eqflow::cpu
