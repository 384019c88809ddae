// kernels/egnn_net.h: EgnnNet, the kernels' view of a model, from the flat parameter buffer.
//
// Plain C++: the library wires device pointers with it (src/egnn_cuda_field.cpp) and the emulation
// tests wire host pointers (tests/test_egnn_emulated.cpp). It does not check that the kernels
// support the configuration; egnn_check_supported does.
#pragma once

#include "common/egnn_offsets.h"
#include "eqflow/egnn.h"
#include "eqflow/error.h"
#include "kernels/egnn.cuh"

namespace eqflow::cuda {

// base points to the flat parameter buffer of egnn_parameter_layout(c) (through egnn_offsets,
// the layout the CPU reference reads too); types to n atom types (null when c is untyped). Both
// are stored, not read.
inline EgnnNet make_egnn_net(const EgnnConfig& c, const float* base, const int* types) {
    const EgnnOffsets off = egnn_offsets(c);
    EgnnNet net;
    net.n = c.n_particles;
    net.d = c.dim;
    net.hidden = c.hidden;
    net.layers = c.layers;
    net.in_features = c.in_features();
    net.num_types = c.num_types();
    net.attention = c.attention ? 1 : 0;
    net.use_tanh = c.tanh ? 1 : 0;
    net.coords_range = static_cast<float>(c.effective_coords_range());
    net.emb_w = base + off.emb_w;
    net.emb_b = base + off.emb_b;
    net.types = types;
    EQFLOW_CHECK(c.layers <= kEgnnMaxLayers,
                 "GPU EGNN supports up to " << kEgnnMaxLayers << " layers");
    for (int l = 0; l < c.layers; ++l) {
        const EgnnLayerOffsets& o = off.layers[static_cast<size_t>(l)];
        EgnnLayerPtrs& p = net.layer[l];
        p.w1 = base + o.edge_w0;
        p.b1 = base + o.edge_b0;
        p.w2 = base + o.edge_w2;
        p.b2 = base + o.edge_b2;
        p.wc1 = base + o.coord_w0;
        p.bc1 = base + o.coord_b0;
        p.wc2 = base + o.coord_w2;
        p.wn1 = base + o.node_w0;
        p.bn1 = base + o.node_b0;
        p.wn2 = base + o.node_w2;
        p.bn2 = base + o.node_b2;
        if (c.attention) {
            p.wa = base + o.att_w0;
            p.ba = base + o.att_b0;
        }
    }
    return net;
}

}  // namespace eqflow::cuda
