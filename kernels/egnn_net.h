// kernels/egnn_net.h: EgnnNet, the kernels' view of a model, from the flat parameter buffer.
//
// Plain C++: the library wires device pointers with it (src/egnn_gpu.cpp) and the emulation
// tests wire host pointers (tests/test_egnn_emulated.cpp). It does not check that the kernels
// support the configuration; egnn_check_supported does.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "eqflow/egnn.h"
#include "eqflow/error.h"
#include "kernels/egnn.cuh"

namespace eqflow::cuda {

// base points to the flat parameter buffer of egnn_parameter_layout(c); types to n atom types
// (null when c is untyped). Both are stored, not read.
inline EgnnNet make_egnn_net(const EgnnConfig& c, const std::vector<ParamEntry>& layout,
                             const float* base, const int* types) {
    std::map<std::string, const float*> ptr;
    for (const ParamEntry& p : layout) ptr[p.name] = base + p.offset;
    auto get = [&](const std::string& name) {
        auto it = ptr.find(name);
        EQFLOW_CHECK(it != ptr.end(), "EGNN parameter layout has no tensor " << name);
        return it->second;
    };
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
    net.emb_w = get("embedding.weight");
    net.emb_b = get("embedding.bias");
    net.types = types;
    EQFLOW_CHECK(c.layers <= kEgnnMaxLayers,
                 "GPU EGNN supports up to " << kEgnnMaxLayers << " layers");
    for (int l = 0; l < c.layers; ++l) {
        const std::string g = "gcl_" + std::to_string(l) + ".";
        EgnnLayerPtrs& p = net.layer[l];
        p.w1 = get(g + "edge_mlp.0.weight");
        p.b1 = get(g + "edge_mlp.0.bias");
        p.w2 = get(g + "edge_mlp.2.weight");
        p.b2 = get(g + "edge_mlp.2.bias");
        p.wc1 = get(g + "coord_mlp.0.weight");
        p.bc1 = get(g + "coord_mlp.0.bias");
        p.wc2 = get(g + "coord_mlp.2.weight");
        p.wn1 = get(g + "node_mlp.0.weight");
        p.bn1 = get(g + "node_mlp.0.bias");
        p.wn2 = get(g + "node_mlp.2.weight");
        p.bn2 = get(g + "node_mlp.2.bias");
        if (c.attention) {
            p.wa = get(g + "att_mlp.0.weight");
            p.ba = get(g + "att_mlp.0.bias");
        }
    }
    return net;
}

}  // namespace eqflow::cuda
