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
// hs is the row length of h, P, Q and M (H, or the tile width Hp of the register-tiled forward,
// with zeros past H), and of W2^T and Wc1^T.
struct PrimalLayout {
    int x0, x, xn, h, P, Q, M, w2t, wc1t, scratch, total, hs;
};

// hs: the row length of h, P, Q, M, W2^T and Wc1^T; scratch: floats of per-warp scratch.
__host__ __device__ inline PrimalLayout primal_layout(int n, int d, int hs, int scratch) {
    PrimalLayout s{};
    s.hs = hs;
    int off = 0;
    auto take = [&](int count) {
        const int at = off;
        off += (count + 3) / 4 * 4;  // 16-byte alignment of every array
        return at;
    };
    s.x0 = take(n * d);
    s.x = take(n * d);
    s.xn = take(n * d);
    s.h = take(n * hs);
    s.P = take(n * hs);
    s.Q = take(n * hs);
    s.M = take(n * hs);
    s.w2t = take(hs * hs);
    s.wc1t = take(hs * hs);
    s.scratch = take(kWarps * scratch);
    s.total = off;
    return s;
}

// The layout of the one-edge-per-warp kernels (divergence, backward): two H-vectors of scratch
// per warp.
__host__ __device__ inline PrimalLayout primal_layout(int n, int d, int H) {
    return primal_layout(n, d, H, 2 * H);
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
    for (int idx = threadIdx.x; idx < n * L.hs; idx += blockDim.x) {
        const int i = idx / L.hs, k = idx % L.hs;
        float acc = 0.0f;  // past H in the tiled layout
        if (k < H) {
            acc = net.emb_b[k] + net.emb_w[k * F + (F - 1)] * tb;  // the time feature is last
            if (net.types != nullptr) acc += net.emb_w[k * F + net.types[i]];
        }
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

// ---------------------------------------------------------------------------------------------
// Register-tiled edge MLPs (the forward kernel).
//
// A warp takes the edges (i, j) of one target i in tiles of EdgeTile<Hp>::kEdges sources
// j = j0, j0 + 1, ... and the tile's Hp hidden units. Hp is H rounded up to 32, 64 or 128 (a
// compile-time constant; the units past H are held at zero: zero weights, biases and P, Q, and
// SiLU(0) = 0, so they add nothing). Lane = eg * kUnitLanes + ug owns the micro-tile of
// kTileE edges e0 + e (e0 = kTileE eg) x kTileU units k0 + u (k0 = kTileU ug) in registers.
// The two H x H products read W^T [Hp][Hp] (4 consecutive units: one LDS.128) and the tile's
// activations transposed, S [Hp][kEdges] in the warp's scratch (4 consecutive edges: one
// LDS.128): 2 shared loads per 16 FMAs. Dot products over the units (attention, coordinate
// output) are butterfly shuffles across the kUnitLanes lanes of an edge group; the sums over j
// (M_i, the coordinate update) are per lane in j order, then a butterfly across the edge groups
// at the end of the target: fixed orders, deterministic, and every lane of a butterfly gets
// the same bits (float addition is commutative).
// ---------------------------------------------------------------------------------------------

constexpr int kTileU = 4;  // hidden units per lane
constexpr int kTileE = 4;  // edges per lane

template <int Hp>
struct EdgeTile {
    static_assert(Hp == 32 || Hp == 64 || Hp == 128, "tile widths 32, 64, 128");
    static constexpr int kUnitLanes = Hp / kTileU;       // lanes that share an edge group
    static constexpr int kEdgeGroups = 32 / kUnitLanes;  // edge groups per warp
    static constexpr int kEdges = kTileE * kEdgeGroups;  // edges per warp tile
};
constexpr int kTileScratch = 32 * kTileU * kTileE;  // floats of S = Hp x kEdges, for every Hp

// The tile width for H <= kEgnnMaxHidden.
__host__ __device__ constexpr int tile_hidden(int H) {
    return H <= 32 ? 32 : (H <= 64 ? 64 : 128);
}

__host__ __device__ inline PrimalLayout tiled_primal_layout(int n, int d, int H) {
    return primal_layout(n, d, tile_hidden(H), kTileScratch);
}

// The lane's kTileU units of the per-unit layer vectors (zero past H).
struct TileVectors {
    float w1r[kTileU], w1a[kTileU], b2[kTileU], bc1[kTileU], wc2[kTileU], wa[kTileU];
    float ba;
};

__device__ inline TileVectors tile_vectors(const EgnnNet& net, const EgnnLayerPtrs& p, int k0) {
    const int H = net.hidden, W1 = 2 * H + 2;
    TileVectors v{};
#pragma unroll
    for (int u = 0; u < kTileU; ++u) {
        const int k = k0 + u;
        const bool on = k < H;
        v.w1r[u] = on ? p.w1[k * W1 + 2 * H] : 0.0f;
        v.w1a[u] = on ? p.w1[k * W1 + 2 * H + 1] : 0.0f;
        v.b2[u] = on ? p.b2[k] : 0.0f;
        v.bc1[u] = on ? p.bc1[k] : 0.0f;
        v.wc2[u] = on ? p.wc2[k] : 0.0f;
        v.wa[u] = (on && net.attention) ? p.wa[k] : 0.0f;
    }
    v.ba = net.attention ? p.ba[0] : 0.0f;
    return v;
}

// v[e][u] -> S[k0 + u][e0 + e]: one STS.128 per unit.
template <int Hp>
__device__ __forceinline__ void store_tile(float* S, const float (&v)[kTileE][kTileU], int k0,
                                           int e0) {
    constexpr int kEdges = EdgeTile<Hp>::kEdges;
#pragma unroll
    for (int u = 0; u < kTileU; ++u) {
        float col[kTileE];
#pragma unroll
        for (int e = 0; e < kTileE; ++e) col[e] = v[e][u];
        st4(S + (k0 + u) * kEdges + e0, col);
    }
}

// acc[e][u] = bias[u] + sum_m Wt[m][k0 + u] S[m][e0 + e], m in order: per m one LDS.128 of
// weights and one of activations feed kTileE x kTileU FMAs.
template <int Hp>
__device__ __forceinline__ void tile_product(const float* Wt, const float* S,
                                             const float (&bias)[kTileU], int k0, int e0,
                                             float (&acc)[kTileE][kTileU]) {
    constexpr int kEdges = EdgeTile<Hp>::kEdges;
#pragma unroll
    for (int e = 0; e < kTileE; ++e)
#pragma unroll
        for (int u = 0; u < kTileU; ++u) acc[e][u] = bias[u];
#pragma unroll
    for (int m = 0; m < Hp; ++m) {
        float w[kTileU], a[kTileE];
        ld4(Wt + m * Hp + k0, w);
        ld4(S + m * kEdges + e0, a);
#pragma unroll
        for (int e = 0; e < kTileE; ++e)
#pragma unroll
            for (int u = 0; u < kTileU; ++u) acc[e][u] += w[u] * a[e];
    }
}

// Sum over the kUnitLanes lanes of the caller's edge group (butterfly).
template <int Hp>
__device__ __forceinline__ float unit_lanes_sum(float v) {
#pragma unroll
    for (int offset = EdgeTile<Hp>::kUnitLanes / 2; offset > 0; offset >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// Sum over the edge groups, the lanes ug, ug + kUnitLanes, ... (butterfly).
template <int Hp>
__device__ __forceinline__ float edge_groups_sum(float v) {
#pragma unroll
    for (int offset = EdgeTile<Hp>::kUnitLanes; offset < 32; offset <<= 1)
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// The edge phase of one layer, as layer_edges_primal, with register tiles: for the warp's
// targets i = warp, warp + kWarps, ...
//   M_i = sum_j m_ij,  x_next_i = x_i + sum_j d_ij phi_ij / (sqrt(r_ij + eps) + 1).
// D = net.d. S is the warp's kTileScratch floats. The tile's slots j = i and j >= n are computed
// on the edge (i, i) and left out of both sums.
template <int Hp, int D>
__device__ inline void layer_edges_tiled(const EgnnNet& net, float* sm, const PrimalLayout& L,
                                         const TileVectors& tv, int cur, int nxt, int warp,
                                         int lane, float* S) {
    using Tile = EdgeTile<Hp>;
    const int n = net.n;
    const int ug = lane % Tile::kUnitLanes, eg = lane / Tile::kUnitLanes;
    const int k0 = kTileU * ug, e0 = kTileE * eg;
    const float cr = net.coords_range;
    for (int i = warp; i < n; i += kWarps) {
        float xi[D], x0i[D], Pi[kTileU];
#pragma unroll
        for (int c = 0; c < D; ++c) {
            xi[c] = sm[cur + i * D + c];
            x0i[c] = sm[L.x0 + i * D + c];
        }
        ld4(sm + L.P + i * Hp + k0, Pi);
        float accM[kTileU] = {};
        float accX[D] = {};
        for (int j0 = 0; j0 < n; j0 += Tile::kEdges) {
            float diff[kTileE][D], r[kTileE], v[kTileE][kTileU];
            bool valid[kTileE];
#pragma unroll
            for (int e = 0; e < kTileE; ++e) {
                const int j = j0 + e0 + e;
                valid[e] = j < n && j != i;
                const int js = j < n ? j : i;
                float a = 0.0f;
                r[e] = 0.0f;
#pragma unroll
                for (int c = 0; c < D; ++c) {
                    diff[e][c] = xi[c] - sm[cur + js * D + c];
                    r[e] += diff[e][c] * diff[e][c];
                    const float d0 = x0i[c] - sm[L.x0 + js * D + c];
                    a += d0 * d0;
                }
                float q[kTileU];
                ld4(sm + L.Q + js * Hp + k0, q);
#pragma unroll
                for (int u = 0; u < kTileU; ++u)
                    v[e][u] = silu(Pi[u] + q[u] + tv.w1r[u] * r[e] + tv.w1a[u] * a);
            }
            store_tile<Hp>(S, v, k0, e0);
            __syncwarp();
            // m_raw = SiLU(W2 SiLU(pre1) + b2), then the gate.
            tile_product<Hp>(sm + L.w2t, S, tv.b2, k0, e0, v);
            float gate[kTileE];
#pragma unroll
            for (int e = 0; e < kTileE; ++e) {
                float dot = 0.0f;
#pragma unroll
                for (int u = 0; u < kTileU; ++u) {
                    v[e][u] = silu(v[e][u]);
                    dot += tv.wa[u] * v[e][u];
                }
                gate[e] = dot;
            }
            if (net.attention) {
#pragma unroll
                for (int e = 0; e < kTileE; ++e)
                    gate[e] = sigmoid(unit_lanes_sum<Hp>(gate[e]) + tv.ba);
            } else {
#pragma unroll
                for (int e = 0; e < kTileE; ++e) gate[e] = 1.0f;
            }
#pragma unroll
            for (int e = 0; e < kTileE; ++e)
#pragma unroll
                for (int u = 0; u < kTileU; ++u) {
                    v[e][u] *= gate[e];  // m_ij
                    accM[u] += valid[e] ? v[e][u] : 0.0f;
                }
            __syncwarp();  // every lane has read S
            store_tile<Hp>(S, v, k0, e0);
            __syncwarp();
            // phi_ij = cr tanh(wc2 . SiLU(Wc1 m_ij + bc1)).
            tile_product<Hp>(sm + L.wc1t, S, tv.bc1, k0, e0, v);
#pragma unroll
            for (int e = 0; e < kTileE; ++e) {
                float dot = 0.0f;
#pragma unroll
                for (int u = 0; u < kTileU; ++u) dot += tv.wc2[u] * silu(v[e][u]);
                const float c = unit_lanes_sum<Hp>(dot);
                const float phi = net.use_tanh ? cr * tanhf(c) : c;
                const float scale = valid[e] ? phi / (sqrtf(r[e] + kCoordEps) + 1.0f) : 0.0f;
#pragma unroll
                for (int c2 = 0; c2 < D; ++c2) accX[c2] += diff[e][c2] * scale;
            }
            __syncwarp();  // S is rewritten by the next tile
        }
#pragma unroll
        for (int u = 0; u < kTileU; ++u) accM[u] = edge_groups_sum<Hp>(accM[u]);
#pragma unroll
        for (int c = 0; c < D; ++c) accX[c] = edge_groups_sum<Hp>(accX[c]);
        if (eg == 0) st4(sm + L.M + i * Hp + k0, accM);  // zero past H
        if (lane == 0) {
#pragma unroll
            for (int c = 0; c < D; ++c) sm[nxt + i * D + c] = xi[c] + accX[c];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Node-wise products of the tiled forward (P, Q and the node MLP): small GEMMs over the n nodes,
// with the weights staged transposed in shared memory (read from global memory once, coalesced)
// and the same lane micro-tiles: kTileE nodes x kTileU units.
// ---------------------------------------------------------------------------------------------

// Wt[m][k] = W[k][col0 + m] for k, m < H, zero elsewhere (k, m < Hp); W row-major with leading
// dimension ld. Block-wide; the caller synchronises.
template <int Hp>
__device__ inline void stage_transposed(float* Wt, const float* __restrict__ W, int ld, int col0,
                                        int H) {
    for (int idx = threadIdx.x; idx < Hp * Hp; idx += blockDim.x) {
        const int k = idx / Hp, m = idx % Hp;  // consecutive threads read consecutive columns
        Wt[m * Hp + k] = (k < H && m < H) ? W[k * ld + col0 + m] : 0.0f;
    }
}

// acc[e][u] += sum_{m < Hp} Wt[m][k0 + u] A[rows[e]][m], m in order; A has rows of Hp. Per four
// inputs m, four LDS.128 of weights and kTileE LDS.128 of activations (a row's four
// consecutive inputs) feed 64 FMAs.
template <int Hp>
__device__ __forceinline__ void rows_product(const float* Wt, const float* A,
                                             const int (&rows)[kTileE], int k0,
                                             float (&acc)[kTileE][kTileU]) {
#pragma unroll 4
    for (int m = 0; m < Hp; m += 4) {
        float w[4][kTileU], a[kTileE][4];
#pragma unroll
        for (int mm = 0; mm < 4; ++mm) ld4(Wt + (m + mm) * Hp + k0, w[mm]);
#pragma unroll
        for (int e = 0; e < kTileE; ++e) ld4(A + rows[e] * Hp + m, a[e]);
#pragma unroll
        for (int mm = 0; mm < 4; ++mm)
#pragma unroll
            for (int e = 0; e < kTileE; ++e)
#pragma unroll
                for (int u = 0; u < kTileU; ++u) acc[e][u] += w[mm][u] * a[e][mm];
    }
}

// acc[e][u] = bias[k0 + u] (zero past H, or everywhere when bias is null).
__device__ __forceinline__ void init_tile(float (&acc)[kTileE][kTileU],
                                          const float* __restrict__ bias, int k0, int H) {
#pragma unroll
    for (int u = 0; u < kTileU; ++u) {
        const float b = (bias != nullptr && k0 + u < H) ? bias[k0 + u] : 0.0f;
#pragma unroll
        for (int e = 0; e < kTileE; ++e) acc[e][u] = b;
    }
}

// The warp's tiles of nodes: node0 = warp kEdges, (warp + kWarps) kEdges, ...; the lane's rows
// node0 + e0 + e, clamped to n - 1 (a clamped row is computed and not stored).
template <int Hp, class Body>
__device__ __forceinline__ void for_node_tiles(int n, int warp, int lane, Body body) {
    using Tile = EdgeTile<Hp>;
    const int e0 = kTileE * (lane / Tile::kUnitLanes);
    for (int node0 = warp * Tile::kEdges; node0 < n; node0 += kWarps * Tile::kEdges) {
        int rows[kTileE];
        bool valid[kTileE];
#pragma unroll
        for (int e = 0; e < kTileE; ++e) {
            valid[e] = node0 + e0 + e < n;
            rows[e] = valid[e] ? node0 + e0 + e : n - 1;
        }
        body(rows, valid);
    }
}

// P = W1a h + b1 and Q = W1b h as [n][Hp], then W2^T and Wc1^T as [Hp][Hp] for the edge phase
// (all zero past H). W1a^T and W1b^T pass through the W2^T and Wc1^T slots; with_w1() runs
// block-wide while they are staged (the divergence's tangent products). Block-wide; the caller
// synchronises after.
template <int Hp, class WithW1>
__device__ inline void prepare_layer_tiled(const EgnnNet& net, const EgnnLayerPtrs& p, float* sm,
                                           const PrimalLayout& L, int warp, int lane,
                                           WithW1 with_w1) {
    const int n = net.n, H = net.hidden, W1 = 2 * H + 2;
    const int k0 = kTileU * (lane % EdgeTile<Hp>::kUnitLanes);
    stage_transposed<Hp>(sm + L.w2t, p.w1, W1, 0, H);
    stage_transposed<Hp>(sm + L.wc1t, p.w1, W1, H, H);
    __syncthreads();
    for_node_tiles<Hp>(n, warp, lane, [&](const int(&rows)[kTileE], const bool(&valid)[kTileE]) {
        float acc[kTileE][kTileU];
        init_tile(acc, p.b1, k0, H);
        rows_product<Hp>(sm + L.w2t, sm + L.h, rows, k0, acc);
#pragma unroll
        for (int e = 0; e < kTileE; ++e)
            if (valid[e]) st4(sm + L.P + rows[e] * Hp + k0, acc[e]);
        init_tile(acc, nullptr, k0, H);
        rows_product<Hp>(sm + L.wc1t, sm + L.h, rows, k0, acc);
#pragma unroll
        for (int e = 0; e < kTileE; ++e)
            if (valid[e]) st4(sm + L.Q + rows[e] * Hp + k0, acc[e]);
    });
    with_w1();
    __syncthreads();
    stage_transposed<Hp>(sm + L.w2t, p.w2, H, 0, H);
    stage_transposed<Hp>(sm + L.wc1t, p.wc1, H, 0, H);
}

template <int Hp>
__device__ inline void prepare_layer_tiled(const EgnnNet& net, const EgnnLayerPtrs& p, float* sm,
                                           const PrimalLayout& L, int warp, int lane) {
    prepare_layer_tiled<Hp>(net, p, sm, L, warp, lane, [] {});
}

// h_i += Wn2 SiLU(Wn1 [h_i, M_i] + bn1) + bn2 for every node: Wn1^T (its h and M halves) through
// the W2^T and Wc1^T slots, the hidden layer through P, then Wn2^T through the W2^T slot.
// keep_pre: the pre-activations Wn1 [h_i, M_i] + bn1 go to Q as well. with_wn1() runs
// block-wide while Wn1^T is staged (after the hidden layer is stored, before a barrier),
// with_wn2() while Wn2^T is (after the update of h): the divergence's tangent products.
// Block-wide; the caller synchronises before (M complete) and after.
template <int Hp, class WithWn1, class WithWn2>
__device__ inline void node_layer_tiled(const EgnnNet& net, const EgnnLayerPtrs& p, float* sm,
                                        const PrimalLayout& L, int warp, int lane, bool keep_pre,
                                        WithWn1 with_wn1, WithWn2 with_wn2) {
    const int n = net.n, H = net.hidden;
    const int k0 = kTileU * (lane % EdgeTile<Hp>::kUnitLanes);
    stage_transposed<Hp>(sm + L.w2t, p.wn1, 2 * H, 0, H);
    stage_transposed<Hp>(sm + L.wc1t, p.wn1, 2 * H, H, H);
    __syncthreads();
    for_node_tiles<Hp>(n, warp, lane, [&](const int(&rows)[kTileE], const bool(&valid)[kTileE]) {
        float acc[kTileE][kTileU];
        init_tile(acc, p.bn1, k0, H);
        rows_product<Hp>(sm + L.w2t, sm + L.h, rows, k0, acc);
        rows_product<Hp>(sm + L.wc1t, sm + L.M, rows, k0, acc);
#pragma unroll
        for (int e = 0; e < kTileE; ++e) {
            if (keep_pre && valid[e]) st4(sm + L.Q + rows[e] * Hp + k0, acc[e]);
#pragma unroll
            for (int u = 0; u < kTileU; ++u) acc[e][u] = silu(acc[e][u]);
            if (valid[e]) st4(sm + L.P + rows[e] * Hp + k0, acc[e]);
        }
    });
    with_wn1();
    __syncthreads();
    stage_transposed<Hp>(sm + L.w2t, p.wn2, H, 0, H);
    __syncthreads();
    for_node_tiles<Hp>(n, warp, lane, [&](const int(&rows)[kTileE], const bool(&valid)[kTileE]) {
        float acc[kTileE][kTileU];
        init_tile(acc, p.bn2, k0, H);
        rows_product<Hp>(sm + L.w2t, sm + L.P, rows, k0, acc);
#pragma unroll
        for (int e = 0; e < kTileE; ++e) {
            if (!valid[e]) continue;
            float h[kTileU];
            ld4(sm + L.h + rows[e] * Hp + k0, h);
#pragma unroll
            for (int u = 0; u < kTileU; ++u) h[u] += acc[e][u];
            st4(sm + L.h + rows[e] * Hp + k0, h);
        }
    });
    with_wn2();
}

template <int Hp>
__device__ inline void node_layer_tiled(const EgnnNet& net, const EgnnLayerPtrs& p, float* sm,
                                        const PrimalLayout& L, int warp, int lane) {
    node_layer_tiled<Hp>(
        net, p, sm, L, warp, lane, false, [] {}, [] {});
}

}  // namespace eqflow::cuda::egnn_detail
