// kernels/egnn.cuh: fused EGNN kernels (docs/design.md section 4), float32 on the device.
//
// The network's parameters stay in the flat layout of egnn_parameter_layout(); EgnnNet holds
// device pointers into that buffer, one set per layer. Launchers take a Stream and never
// allocate: the caller passes workspace sized by the *_workspace_bytes functions.
#pragma once

#include <cstddef>
#include <cstdint>

#include "eqflow/device.h"

namespace eqflow::cuda {

constexpr int kEgnnMaxLayers = 16;
constexpr int kEgnnMaxHidden = 128;  // four hidden units per lane of a warp
constexpr int kEgnnMaxDim = 3;

struct EgnnLayerPtrs {
    const float* w1;   // edge_mlp.0.weight [H][2H+2]: columns h_i | h_j | r_ij | a_ij
    const float* b1;   // [H]
    const float* w2;   // edge_mlp.2.weight [H][H]
    const float* b2;   // [H]
    const float* wa;   // att_mlp.0.weight [1][H] (null without attention)
    const float* ba;   // [1]
    const float* wc1;  // coord_mlp.0.weight [H][H]
    const float* bc1;  // [H]
    const float* wc2;  // coord_mlp.2.weight [1][H], no bias
    const float* wn1;  // node_mlp.0.weight [H][2H]: columns h_i | sum_j m_ij
    const float* bn1;  // [H]
    const float* wn2;  // node_mlp.2.weight [H][H]
    const float* bn2;  // [H]
};

struct EgnnNet {
    int n = 0, d = 0, hidden = 0, layers = 0;
    int in_features = 1;  // num_types + 1
    int num_types = 0;
    int attention = 1;
    int use_tanh = 1;
    float coords_range = 5.0f;
    const float* emb_w = nullptr;  // embedding.weight [H][F]
    const float* emb_b = nullptr;  // [H]
    const int* types = nullptr;    // [n] device, null when untyped
    EgnnLayerPtrs layer[kEgnnMaxLayers] = {};
};

// Throws Error when the configuration does not fit the kernels (H, L, d, shared memory).
void egnn_check_supported(const EgnnNet& net);

// v [B][n][d] = field(x [B][n][d], t [B]). No workspace.
void egnn_forward(const EgnnNet& net, int64_t B, const float* x, const float* t, float* v,
                  Stream stream);

// Exact divergence div [B] (and v [B][n][d], nullable) by forward-mode tangents.
size_t egnn_divergence_workspace_bytes(const EgnnNet& net, int64_t B);
void egnn_divergence(const EgnnNet& net, int64_t B, const float* x, const float* t, float* v,
                     float* div, void* workspace, size_t workspace_bytes, Stream stream);

// div[b] = (1/K) sum_k dirs[b][k] . (J_v(x_b) dirs[b][k]) for K directions per sample,
// dirs [B][K][n][d] (device): Hutchinson's estimate of the divergence with Rademacher (or
// Gaussian) directions, by forward-mode tangents as egnn_divergence; v nullable.
size_t egnn_jvp_trace_workspace_bytes(const EgnnNet& net, int64_t B, int K);
void egnn_jvp_trace(const EgnnNet& net, int64_t B, int K, const float* dirs, const float* x,
                    const float* t, float* v, float* div, void* workspace, size_t workspace_bytes,
                    Stream stream);

// Reverse mode: dL_dparams [param_count] += dL/dparams (accumulates), dL_dx [B][n][d] =
// dL/dx (overwrites; nullable), for dL_dv [B][n][d]. params_base is the start of the flat
// parameter buffer that net's pointers point into (gradients use the same offsets).
size_t egnn_backward_workspace_bytes(const EgnnNet& net, int64_t B, int64_t param_count);
void egnn_backward(const EgnnNet& net, const float* params_base, int64_t param_count, int64_t B,
                   const float* x, const float* t, const float* dL_dv, float* dL_dparams,
                   float* dL_dx, void* workspace, size_t workspace_bytes, Stream stream);

}  // namespace eqflow::cuda
