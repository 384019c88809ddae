// src/common/egnn_offsets.h: where every EGNN parameter tensor sits in the flat parameter buffer,
// derived from egnn_parameter_layout (eqflow/egnn.h), the one table of names, shapes and order.
// Both backends read their weights through it: the CPU reference (src/cpu/egnn_cpu.cpp) and the
// CUDA kernels' EgnnNet (kernels/egnn_net.h). Host code only.
#pragma once

#include <cstdint>
#include <vector>

#include "eqflow/egnn.h"
#include "eqflow/export.h"

namespace eqflow {

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
EQFLOW_API EgnnOffsets egnn_offsets(const EgnnConfig& config);

}  // namespace eqflow
