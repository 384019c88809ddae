// kernels/egnn_common.cuh: device pieces shared by the EGNN kernels (egnn.cu, egnn_backward.cu):
// constants, shared-memory layouts, activations, and the primal edge/node computations. See the
// header comment of kernels/egnn_kernels.cuh for the math and the work decomposition.
#pragma once

#include <algorithm>

#include "kernels/cuda_check.cuh"
#include "kernels/egnn.cuh"

namespace eqflow::cuda::egnn_detail {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kLanesQ = kEgnnMaxHidden / 32;  // hidden units per lane, at most
constexpr int kTangents = 8;                  // tangent directions per divergence block
constexpr size_t kMaxSmemBytes = 227 * 1024;
constexpr float kCoordEps = 1e-8f;  // sqrt(r + eps) + 1 in the coordinate update

// Dynamic shared memory one block may opt in to on the current device, at most kMaxSmemBytes
// (227 KB on sm_90, but 163 KB on sm_80 and 99 KB on sm_86/89, which run the sm_80 build).
inline size_t max_smem_bytes() {
    return std::min(kMaxSmemBytes, current_device_info().max_smem_optin);
}

__device__ __forceinline__ float sigmoid(float z) {
    return 1.0f / (1.0f + expf(-z));
}
__device__ __forceinline__ float silu(float z) {
    return z * sigmoid(z);
}
// d/dz SiLU(z) = s (1 + z (1 - s)), s = sigmoid(z)
__device__ __forceinline__ float silu_grad(float z) {
    const float s = sigmoid(z);
    return s * (1.0f + z * (1.0f - s));
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// Shared-memory layout of the primal state, in floats.
struct PrimalLayout {
    int x0, x, xn, h, P, Q, M, w2t, wc1t, scratch, total;
};

__host__ __device__ inline PrimalLayout primal_layout(int n, int d, int H) {
    PrimalLayout s{};
    int off = 0;
    auto take = [&](int count) {
        const int at = off;
        off += (count + 3) / 4 * 4;  // 16-byte alignment of every array
        return at;
    };
    s.x0 = take(n * d);
    s.x = take(n * d);
    s.xn = take(n * d);
    s.h = take(n * H);
    s.P = take(n * H);
    s.Q = take(n * H);
    s.M = take(n * H);
    s.w2t = take(H * H);
    s.wc1t = take(H * H);
    s.scratch = take(kWarps * 2 * H);
    s.total = off;
    return s;
}

// Extra shared memory of the divergence kernel: tangent coordinates (current, next, input) and
// per-warp tangent scratch.
struct TangentLayout {
    int dx, dxn, dx0, scratch, total;
};

__host__ __device__ inline TangentLayout tangent_layout(int base, int n, int d, int H) {
    TangentLayout s{};
    int off = base;
    auto take = [&](int count) {
        const int at = off;
        off += (count + 3) / 4 * 4;
        return at;
    };
    s.dx = take(kTangents * n * d);
    s.dxn = take(kTangents * n * d);
    s.dx0 = take(kTangents * n * d);  // the input tangents: they move x0 too, and enter the trace
    s.scratch = take(kWarps * 2 * kTangents * H);
    s.total = off;
    return s;
}

// ---------------------------------------------------------------------------------------------
// Pieces shared by both kernels. All threads of the block call them (they synchronise).
// ---------------------------------------------------------------------------------------------

// h_i = embedding([one_hot(type_i), t]); x0 = x = input.
__device__ inline void load_sample(const EgnnNet& net, const float* __restrict__ xb, float tb,
                                   float* sm, const PrimalLayout& L) {
    const int n = net.n, d = net.d, H = net.hidden, F = net.in_features;
    for (int k = threadIdx.x; k < n * d; k += blockDim.x) {
        sm[L.x0 + k] = xb[k];
        sm[L.x + k] = xb[k];
    }
    for (int idx = threadIdx.x; idx < n * H; idx += blockDim.x) {
        const int i = idx / H, k = idx % H;
        float acc = net.emb_b[k] + net.emb_w[k * F + (F - 1)] * tb;  // the time feature is last
        if (net.types != nullptr) acc += net.emb_w[k * F + net.types[i]];
        sm[L.h + idx] = acc;
    }
}

// W2^T and Wc1^T into shared memory; P = W1a h + b1 and Q = W1b h for every node.
__device__ inline void prepare_layer(const EgnnNet& net, const EgnnLayerPtrs& p, float* sm,
                                     const PrimalLayout& L) {
    const int n = net.n, H = net.hidden, W1 = 2 * H + 2;
    for (int idx = threadIdx.x; idx < H * H; idx += blockDim.x) {
        const int k = idx / H, m = idx % H;  // row k (output), column m (input)
        sm[L.w2t + m * H + k] = p.w2[idx];
        sm[L.wc1t + m * H + k] = p.wc1[idx];
    }
    for (int idx = threadIdx.x; idx < n * H; idx += blockDim.x) {
        const int i = idx / H, k = idx % H;
        const float* hi = sm + L.h + i * H;
        const float* row = p.w1 + k * W1;
        float accP = p.b1[k], accQ = 0.0f;
        for (int m = 0; m < H; ++m) {
            accP += row[m] * hi[m];
            accQ += row[H + m] * hi[m];
        }
        sm[L.P + idx] = accP;
        sm[L.Q + idx] = accQ;
    }
}

// Per-lane copies of the per-unit layer vectors.
struct LaneVectors {
    float w1r[kLanesQ], w1a[kLanesQ], b2[kLanesQ], bc1[kLanesQ], wc2[kLanesQ], wa[kLanesQ];
    float ba;
};

__device__ inline LaneVectors lane_vectors(const EgnnNet& net, const EgnnLayerPtrs& p, int lane) {
    const int H = net.hidden, W1 = 2 * H + 2;
    LaneVectors v{};
#pragma unroll
    for (int q = 0; q < kLanesQ; ++q) {
        const int k = lane + 32 * q;
        const bool on = k < H;
        v.w1r[q] = on ? p.w1[k * W1 + 2 * H] : 0.0f;
        v.w1a[q] = on ? p.w1[k * W1 + 2 * H + 1] : 0.0f;
        v.b2[q] = on ? p.b2[k] : 0.0f;
        v.bc1[q] = on ? p.bc1[k] : 0.0f;
        v.wc2[q] = on ? p.wc2[k] : 0.0f;
        v.wa[q] = (on && net.attention) ? p.wa[k] : 0.0f;
    }
    v.ba = net.attention ? p.ba[0] : 0.0f;
    return v;
}

// The primal activations of one edge that the tangent pass needs again.
struct EdgePrimal {
    float pre1[kLanesQ], pre2[kLanesQ], mraw[kLanesQ], m[kLanesQ], pre3[kLanesQ];
    float gate, c, phi;
};

// One edge (i, j) for one warp: the messages m_ij (lane's units) and phi_ij.
// s1 and mm are this warp's two H-vectors of scratch.
__device__ inline void edge_primal(const EgnnNet& net, const float* sm, const PrimalLayout& L,
                                   const LaneVectors& lv, int i, int j, float r, float a, int lane,
                                   float* s1, float* mm, EdgePrimal& e) {
    const int H = net.hidden;
#pragma unroll
    for (int q = 0; q < kLanesQ; ++q) {
        const int k = lane + 32 * q;
        if (k < H) {
            e.pre1[q] = sm[L.P + i * H + k] + sm[L.Q + j * H + k] + lv.w1r[q] * r + lv.w1a[q] * a;
            s1[k] = silu(e.pre1[q]);
        } else {
            e.pre1[q] = 0.0f;  // unused: every reader checks k < H
        }
    }
    __syncwarp();
    float gate_dot = 0.0f;
#pragma unroll
    for (int q = 0; q < kLanesQ; ++q) {
        const int k = lane + 32 * q;
        if (k < H) {
            float acc = lv.b2[q];
            for (int mi = 0; mi < H; ++mi) acc += sm[L.w2t + mi * H + k] * s1[mi];
            e.pre2[q] = acc;
            e.mraw[q] = silu(acc);
            gate_dot += lv.wa[q] * e.mraw[q];
        } else {
            e.pre2[q] = e.mraw[q] = 0.0f;
        }
    }
    e.gate = net.attention ? sigmoid(warp_sum(gate_dot) + lv.ba) : 1.0f;
#pragma unroll
    for (int q = 0; q < kLanesQ; ++q) {
        const int k = lane + 32 * q;
        e.m[q] = e.mraw[q] * e.gate;
        if (k < H) mm[k] = e.m[q];
    }
    __syncwarp();
    float cpart = 0.0f;
#pragma unroll
    for (int q = 0; q < kLanesQ; ++q) {
        const int k = lane + 32 * q;
        if (k < H) {
            float acc = lv.bc1[q];
            for (int mi = 0; mi < H; ++mi) acc += sm[L.wc1t + mi * H + k] * mm[mi];
            e.pre3[q] = acc;
            cpart += lv.wc2[q] * silu(acc);
        } else {
            e.pre3[q] = 0.0f;
        }
    }
    e.c = warp_sum(cpart);
    e.phi = net.use_tanh ? net.coords_range * tanhf(e.c) : e.c;
}

// The edge phase of one layer for the warp's targets i = warp, warp + kWarps, ...:
//   M_i = sum_j m_ij,  x_next_i = x_i + sum_j d_ij phi_ij / (sqrt(r_ij + eps) + 1),
// each summed over j in order by the one warp that owns i (deterministic). The coordinates are
// read at sm + cur and written at sm + nxt; M_keep (nullable, [n][H]) gets a copy of M.
__device__ inline void layer_edges_primal(const EgnnNet& net, float* sm, const PrimalLayout& L,
                                          const LaneVectors& lv, int cur, int nxt, int warp,
                                          int lane, float* s1, float* mm, float* M_keep) {
    const int n = net.n, d = net.d, H = net.hidden;
    for (int i = warp; i < n; i += kWarps) {
        float accM[kLanesQ] = {};
        float accX[kEgnnMaxDim] = {};
        for (int j = 0; j < n; ++j) {
            if (j == i) continue;
            float diff[kEgnnMaxDim] = {};
            float r = 0.0f, a = 0.0f;
            for (int c = 0; c < d; ++c) {
                diff[c] = sm[cur + i * d + c] - sm[cur + j * d + c];
                r += diff[c] * diff[c];
                const float d0 = sm[L.x0 + i * d + c] - sm[L.x0 + j * d + c];
                a += d0 * d0;
            }
            EdgePrimal e;
            edge_primal(net, sm, L, lv, i, j, r, a, lane, s1, mm, e);
            const float scale = e.phi / (sqrtf(r + kCoordEps) + 1.0f);
            for (int c = 0; c < d; ++c) accX[c] += diff[c] * scale;
#pragma unroll
            for (int q = 0; q < kLanesQ; ++q) accM[q] += e.m[q];
            __syncwarp();  // scratch is rewritten by the next edge
        }
#pragma unroll
        for (int q = 0; q < kLanesQ; ++q) {
            const int k = lane + 32 * q;
            if (k < H) {
                sm[L.M + i * H + k] = accM[q];
                if (M_keep != nullptr) M_keep[i * H + k] = accM[q];
            }
        }
        if (lane < d) sm[nxt + i * d + lane] = sm[cur + i * d + lane] + accX[lane];
    }
}

// h_i += Wn2 SiLU(Wn1 [h_i, M_i] + bn1) + bn2 for the warp's nodes. hid_pre (nullable) keeps the
// lane's pre-activations for the tangent pass.
__device__ inline void node_primal(const EgnnNet& net, const EgnnLayerPtrs& p, float* sm,
                                   const PrimalLayout& L, int i, int lane, float* hid,
                                   float* hid_pre) {
    const int H = net.hidden;
    const float* hi = sm + L.h + i * H;
    const float* Mi = sm + L.M + i * H;
#pragma unroll
    for (int q = 0; q < kLanesQ; ++q) {
        const int k = lane + 32 * q;
        if (k < H) {
            const float* row = p.wn1 + k * 2 * H;
            float acc = p.bn1[k];
            for (int m = 0; m < H; ++m) acc += row[m] * hi[m] + row[H + m] * Mi[m];
            if (hid_pre) hid_pre[q] = acc;
            hid[k] = silu(acc);
        }
    }
    __syncwarp();
    float out[kLanesQ];
#pragma unroll
    for (int q = 0; q < kLanesQ; ++q) {
        const int k = lane + 32 * q;
        out[q] = 0.0f;
        if (k < H) {
            const float* row = p.wn2 + k * H;
            float acc = p.bn2[k];
            for (int m = 0; m < H; ++m) acc += row[m] * hid[m];
            out[q] = acc;
        }
    }
    __syncwarp();  // every lane has read h_i before any lane writes it
#pragma unroll
    for (int q = 0; q < kLanesQ; ++q) {
        const int k = lane + 32 * q;
        if (k < H) sm[L.h + i * H + k] += out[q];
    }
    __syncwarp();
}

// v = x^L - x^0 with its particle mean removed, written to vb (block-wide).
__device__ inline void write_field(const EgnnNet& net, const float* sm, const PrimalLayout& L,
                                   const float* xL, float* __restrict__ vb) {
    const int n = net.n, d = net.d;
    for (int idx = threadIdx.x; idx < n * d; idx += blockDim.x) {
        const int a = idx % d;
        float mean = 0.0f;
        for (int i = 0; i < n; ++i) mean += xL[i * d + a] - sm[L.x0 + i * d + a];
        mean /= static_cast<float>(n);
        vb[idx] = xL[idx] - sm[L.x0 + idx] - mean;
    }
}

}  // namespace eqflow::cuda::egnn_detail
