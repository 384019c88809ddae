// kernels/egnn_backward_kernels.cuh: device code of the fused EGNN reverse mode, register-tiled.
// The launcher is in kernels/egnn_backward.cu; emu/ runs this same code on the CPU.
//
// Gradient contract: dL_dparams += dL/dparams (accumulates), dL_dx = dL/dx (overwrites).
//
// Work decomposition: persistent blocks of 256 threads (8 warps); block s owns workspace slot s
// and walks samples b = s, s + gridDim.x, ... For one sample it
//   1. runs the register-tiled forward of kernels/egnn_common.cuh, storing the per-layer node
//      states h^l, x^l, M^l in its slot (O(L n Hp) floats; no edge tensor is ever stored),
//   2. walks the layers backwards:
//      a. the node MLP's backward as node tiles (the forward's rows_product: a warp takes
//         kEdges nodes, a lane 4 nodes x 4 units) with Wn1, Wn2 staged in shared memory, and its
//         weight gradients as products over the nodes (rows_outer: a thread owns 4 x 4 outputs);
//      b. the edges in ROUNDS: in round (g, j0) warp w takes the edge tile of target
//         i = 8 g + w and the kEdges sources j0, j0 + 1, ... (EdgeTile<Hp>), so the eight tiles of
//         a round share their sources. Each warp recomputes its tile's activations with the
//         forward's register-tiled products (W2 s1, Wc1 m) and back-propagates through them with
//         the same micro-tiles (Wc1^T gzc, W2^T gz2, reading the staged W^T row-wise), leaving
//         the tile's operands s1, m, gzc, gz2, gz1 [Hp][kEdges] in its five scratch slots. The
//         per-unit sums over the warp's edges (wc2, wa, w1r, w1a, ba, and P_i's gradient) go
//         to per-warp accumulators in shared memory; the target's coordinate sums to gxacc.
//         Then (one barrier) the whole block adds the round's 8 x kEdges edges to the W2 and Wc1
//         gradients as one product over the edges (a thread owns 4 x 4 entries; per four
//         edges 8 LDS.128 feed 64 FMAs), and the sources' shares (gQ_j, gx_j, gx0_j) in warp
//         order; a second barrier frees the slots;
//      c. the per-node parts of W1 (P = W1a h + b1, Q = W1b h) as products over the nodes, and
//         dL/dh^l = dL/dh + W1a^T gP + W1b^T gQ as node tiles.
//   3. Parameter gradients go to the slot's private gradient buffer, each entry owned by one
//      thread and updated in a fixed order (rounds in order, warps and edges in order within a
//      round, nodes in order); per-warp accumulators are added in warp order. A final kernel
//      adds the slots to dL_dparams in slot order.
// Every sum has a fixed order, so two runs give bit-identical gradients whatever the schedule.
//
// Compiled for Hp = 32, 64, 128 (H rounded up, zero-padded: zero weights make the padded units
// exactly zero in every activation and gradient) and d = 1, 2, 3; at most 128 registers.
//
// Shared memory (floats): 2 Hp^2 (staged weights) + 6 Hp (per-unit vectors) + 8 x 5 x 512 (the
// warps' slots) + 8 x 6 Hp (per-warp accumulators) + 8 x 16 x 12 (per-edge scalars) + 6 n d (x0,
// x, x_next, gx, gx0, gxacc) + 5 n Hp (h, P, Q, M / gQ, gh). LJ55 (H 64, d 3): 204 KiB. The
// Hp = 128 instances need at least 246 KiB, more than any device offers (the launcher refuses).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/device_compat.cuh"
#include "kernels/egnn.cuh"
#include "kernels/egnn_common.cuh"

namespace eqflow::cuda::egnn_detail {
namespace {  // one copy per including file: internal linkage

// A warp's scratch slots, each [Hp][kEdges] = kBwdSlotFloats (the operand layout of
// tile_product): the round's edge vectors.
enum { kBwdS1 = 0, kBwdMe, kBwdGzc, kBwdGz2, kBwdGz1, kBwdSlots };
constexpr int kBwdSlotFloats = kTileScratch;
// Per-warp accumulators, rows of Hp: sums over the warp's edges.
enum { kBwdAccWc2 = 0, kBwdAccWa, kBwdAccW1r, kBwdAccW1a, kBwdAccP, kBwdAccBa, kBwdAccRows };
// The layer's per-unit vectors, rows of Hp (zero past H).
enum { kBwdVecW1r = 0, kBwdVecW1a, kBwdVecB2, kBwdVecBc1, kBwdVecWc2, kBwdVecWa, kBwdVecRows };
// Per-warp edge scalars [kEdges <= 16][12]: gdiff[D] and gdiff0[D] (the round's source sums),
// then the gate, phi / (sq + 1) and dL/dr of the coordinate update (kept here rather than in
// registers through the products).
constexpr int kBwdMaxEdges = EdgeTile<32>::kEdges;
constexpr int kBwdEdgeScalars = 12;
enum { kBwdEscGate = 2 * kEgnnMaxDim, kBwdEscPhinv, kBwdEscGr };
static_assert(kBwdEscGr < kBwdEdgeScalars, "edge scalars");

struct BackwardLayout {
    PrimalLayout L;  // w2t, wc1t: the staged weights; M doubles as gQ in the edge phase
    int sample, vec, slots, acc, esc, gx, gx0, gxacc, gh, total;
};

__host__ __device__ inline BackwardLayout backward_layout(int n, int d, int Hp) {
    BackwardLayout s{};
    int off = 0;
    auto take = [&](int count) {
        const int at = off;
        off += (count + 3) / 4 * 4;  // 16-byte alignment of every array
        return at;
    };
    s.L.hs = Hp;
    s.sample = take(1);  // the block's current sample (an int)
    s.L.w2t = take(Hp * Hp);
    s.L.wc1t = take(Hp * Hp);
    s.vec = take(kBwdVecRows * Hp);
    s.slots = take(kWarps * kBwdSlots * kBwdSlotFloats);
    s.L.scratch = s.slots;
    s.acc = take(kWarps * kBwdAccRows * Hp);
    s.esc = take(kWarps * kBwdMaxEdges * kBwdEdgeScalars);
    s.L.x0 = take(n * d);
    s.L.x = take(n * d);
    s.L.xn = take(n * d);
    s.gx = take(n * d);
    s.gx0 = take(n * d);
    s.gxacc = take(n * d);
    s.L.h = take(n * Hp);
    s.L.P = take(n * Hp);
    s.L.Q = take(n * Hp);
    s.L.M = take(n * Hp);
    s.gh = take(n * Hp);
    s.L.total = s.total = off;
    return s;
}

// Per-slot global workspace (floats): hs [L][n][Hp], xs [L+1][n][d], Ms [L][n][Hp],
// gM [n][Hp], then the slot's gradient buffer [param_count]. H is the hidden size (rows are
// padded to Hp = tile_hidden(H)).
struct SlotLayout {
    size_t hs, xs, Ms, gM, grad, total;
};

__host__ __device__ inline SlotLayout slot_layout(int n, int d, int H, int L, int64_t param_count) {
    const size_t Hp = static_cast<size_t>(tile_hidden(H));
    SlotLayout s{};
    size_t off = 0;
    auto take = [&](size_t count) {
        const size_t at = off;
        off += (count + 63) / 64 * 64;
        return at;
    };
    s.hs = take(static_cast<size_t>(L) * n * Hp);
    s.xs = take(static_cast<size_t>(L + 1) * n * d);
    s.Ms = take(static_cast<size_t>(L) * n * Hp);
    s.gM = take(static_cast<size_t>(n) * Hp);
    s.grad = take(static_cast<size_t>(param_count));
    s.total = off;
    return s;
}

// Offset of a parameter tensor (a pointer into the parameter buffer) in the gradient buffer.
__device__ __forceinline__ float* grad_of(float* grad, const float* base, const float* param) {
    return grad + (param - base);
}

// Wt[m][k] = W[m][col0 + k] for m, k < H, zero elsewhere (m, k < Hp): W row-major with leading
// dimension ld, staged as it is (the products that need W^T x read it so). Block-wide; the
// caller synchronises.
template <int Hp>
__device__ inline void stage_straight(float* Wt, const float* __restrict__ W, int ld, int col0,
                                      int H) {
    for (int idx = threadIdx.x; idx < Hp * Hp; idx += blockDim.x) {
        const int m = idx / Hp, k = idx % Hp;  // consecutive threads read consecutive columns
        Wt[idx] = (m < H && k < H) ? W[m * ld + col0 + k] : 0.0f;
    }
}

// The layer's per-unit vectors into vec (block-wide; the caller synchronises).
template <int Hp>
__device__ inline void stage_backward_vectors(const EgnnNet& net, const EgnnLayerPtrs& p,
                                              float* vec) {
    const int H = net.hidden, W1 = 2 * H + 2;
    for (int idx = threadIdx.x; idx < kBwdVecRows * Hp; idx += blockDim.x) {
        const int row = idx / Hp, k = idx % Hp;
        float val = 0.0f;
        if (k < H) {
            if (row == kBwdVecW1r)
                val = p.w1[k * W1 + 2 * H];
            else if (row == kBwdVecW1a)
                val = p.w1[k * W1 + 2 * H + 1];
            else if (row == kBwdVecB2)
                val = p.b2[k];
            else if (row == kBwdVecBc1)
                val = p.bc1[k];
            else if (row == kBwdVecWc2)
                val = p.wc2[k];
            else
                val = net.attention ? p.wa[k] : 0.0f;
        }
        vec[idx] = val;
    }
}

// acc[e][u] += sum_o Wt[k0 + u][o] S[o][e0 + e], o in order: the product with W^T of the W
// whose transpose Wt is (Wt[m][k] = W[k][m]), reading Wt row-wise. Per four inputs o, four
// LDS.128 of weights and four of the tile's activations feed 64 FMAs.
template <int Hp>
__device__ __forceinline__ void tile_product_t(const float* Wt, const float* S, int k0, int e0,
                                               float (&acc)[kTileE][kTileU]) {
    constexpr int kEdges = EdgeTile<Hp>::kEdges;
#pragma unroll
    for (int o = 0; o < Hp; o += 4) {
        float w[kTileU][4], a[4][kTileE];
#pragma unroll
        for (int u = 0; u < kTileU; ++u) ld4(Wt + (k0 + u) * Hp + o, w[u]);
#pragma unroll
        for (int oo = 0; oo < 4; ++oo) ld4(S + (o + oo) * kEdges + e0, a[oo]);
#pragma unroll
        for (int oo = 0; oo < 4; ++oo)
#pragma unroll
            for (int e = 0; e < kTileE; ++e)
#pragma unroll
                for (int u = 0; u < kTileU; ++u) acc[e][u] += w[u][oo] * a[oo][e];
    }
}

// dst[o ld + col0 + k] += sum_{i < n} A[i][o] B[i][k] for o, k < H (i in order), and
// bias[o] += sum_i A[i][o] when bias is not null; A, B with rows of Hp. Block-wide: thread t owns
// the 4 x 4 entries of tile t, t + blockDim.x, ...; per node two LDS.128 feed 16 FMAs.
template <int Hp>
__device__ inline void rows_outer(const float* A, const float* B, int n, float* dst, int ld,
                                  int col0, int H, float* bias) {
    constexpr int Q = Hp / 4;
    for (int t = threadIdx.x; t < Q * Q; t += blockDim.x) {
        const int o0 = 4 * (t / Q), k0 = 4 * (t % Q);
        if (o0 >= H || k0 >= H) continue;
        float acc[4][4] = {}, bs[4] = {};
#pragma unroll 4
        for (int i = 0; i < n; ++i) {
            float a[4], b[4];
            ld4(A + i * Hp + o0, a);
            ld4(B + i * Hp + k0, b);
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                bs[u] += a[u];
#pragma unroll
                for (int v = 0; v < 4; ++v) acc[u][v] += a[u] * b[v];
            }
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const int o = o0 + u;
            if (o >= H) continue;
#pragma unroll
            for (int v = 0; v < 4; ++v)
                if (k0 + v < H) dst[o * ld + col0 + k0 + v] += acc[u][v];
            if (bias != nullptr && k0 == 0) bias[o] += bs[u];
        }
    }
}

// row[k0 + u] += the sum of v[u] over the warp's edge groups (the lanes with eg = 0 write).
template <int Hp>
__device__ __forceinline__ void accumulate_units(float* row, float (&v)[kTileU], int k0, int eg) {
#pragma unroll
    for (int u = 0; u < kTileU; ++u) v[u] = edge_groups_sum<Hp>(v[u]);
    if (eg == 0) {
        float old[kTileU];
        ld4(row + k0, old);
#pragma unroll
        for (int u = 0; u < kTileU; ++u) old[u] += v[u];
        st4(row + k0, old);
    }
}

// d_ij = x_i - x_j, r_ij = |d_ij|^2, d0_ij = x0_i - x0_j, a_ij = |d0_ij|^2.
template <int D>
struct EdgeGeom {
    float diff[D], diff0[D], r, a;
};

template <int D>
__device__ __forceinline__ EdgeGeom<D> edge_geom(const float* sm, const PrimalLayout& L, int i,
                                                 int j) {
    EdgeGeom<D> g;
    g.r = g.a = 0.0f;
#pragma unroll
    for (int c = 0; c < D; ++c) {
        g.diff[c] = sm[L.x + i * D + c] - sm[L.x + j * D + c];
        g.r += g.diff[c] * g.diff[c];
        g.diff0[c] = sm[L.x0 + i * D + c] - sm[L.x0 + j * D + c];
        g.a += g.diff0[c] * g.diff0[c];
    }
    return g;
}

// The warp's part of a round: the edge tile (i, j0 + 0 .. kEdges - 1) recomputed and
// back-propagated. i >= n (a warp without a target in the last group) computes on the row n - 1
// with every edge invalid: all its gradients are exactly zero. gM: dL/dM^l (null after the last
// layer); ws, acc, esc: the warp's slots, accumulators and edge scalars.
template <int Hp, int D>
__device__ __forceinline__ void edge_tile_backward(const EgnnNet& net, float* sm,
                                                   const BackwardLayout& Y, const float* gM,
                                                   float ba, int i, int j0, int lane, float* ws,
                                                   float* acc, float* esc) {
    using Tile = EdgeTile<Hp>;
    const PrimalLayout& L = Y.L;
    const int n = net.n;
    const int ug = lane % Tile::kUnitLanes, eg = lane / Tile::kUnitLanes;
    const int k0 = kTileU * ug, e0 = kTileE * eg;
    const bool act = i < n;
    const int ic = act ? i : n - 1;
    const float* vec = sm + Y.vec;
    float* S1 = ws + kBwdS1 * kBwdSlotFloats;
    float* Me = ws + kBwdMe * kBwdSlotFloats;
    float* Gzc = ws + kBwdGzc * kBwdSlotFloats;
    float* Gz2 = ws + kBwdGz2 * kBwdSlotFloats;
    float* Gz1 = ws + kBwdGz1 * kBwdSlotFloats;
    bool valid[kTileE];
    int js[kTileE];
#pragma unroll
    for (int e = 0; e < kTileE; ++e) {
        const int j = j0 + e0 + e;
        valid[e] = act && j < n && j != ic;
        js[e] = j < n ? j : ic;  // a slot past n computes the edge (i, i), left out
    }

    // s1 = SiLU(pre1), pre1 = P_i + Q_j + w1r r + w1a a.
    {
        float Pi[kTileU], w1r[kTileU], w1a[kTileU], v[kTileE][kTileU];
        ld4(sm + L.P + ic * Hp + k0, Pi);
        ld4(vec + kBwdVecW1r * Hp + k0, w1r);
        ld4(vec + kBwdVecW1a * Hp + k0, w1a);
#pragma unroll
        for (int e = 0; e < kTileE; ++e) {
            const EdgeGeom<D> g = edge_geom<D>(sm, L, ic, js[e]);
            float q[kTileU];
            ld4(sm + L.Q + js[e] * Hp + k0, q);
#pragma unroll
            for (int u = 0; u < kTileU; ++u)
                v[e][u] = silu(Pi[u] + q[u] + w1r[u] * g.r + w1a[u] * g.a);
        }
        store_tile<Hp>(S1, v, k0, e0);
    }
    __syncwarp();

    // pre2 = W2 s1 + b2 (kept in the Gz1 slot until gz2), m_raw = SiLU(pre2), the gate, m.
    {
        float b2[kTileU], wa[kTileU], v[kTileE][kTileU];
        ld4(vec + kBwdVecB2 * Hp + k0, b2);
        tile_product<Hp>(sm + L.w2t, S1, b2, k0, e0, v);
        store_tile<Hp>(Gz1, v, k0, e0);  // the lane's own words: read back by the lane only
        ld4(vec + kBwdVecWa * Hp + k0, wa);
#pragma unroll
        for (int e = 0; e < kTileE; ++e) {
            float dot = 0.0f;
#pragma unroll
            for (int u = 0; u < kTileU; ++u) {
                v[e][u] = silu(v[e][u]);
                dot += wa[u] * v[e][u];
            }
            const float gate = net.attention ? sigmoid(unit_lanes_sum<Hp>(dot) + ba) : 1.0f;
            if (ug == 0) esc[(e0 + e) * kBwdEdgeScalars + kBwdEscGate] = gate;
#pragma unroll
            for (int u = 0; u < kTileU; ++u) v[e][u] *= gate;
        }
        store_tile<Hp>(Me, v, k0, e0);
    }
    __syncwarp();

    // c = wc2 . SiLU(pre3), pre3 = Wc1 m + bc1, phi = cr tanh(c); the coordinate update
    // x_i += d_ij phi / (sqrt(r + eps) + 1) backwards: gc = dL/dc, gzc = dL/dpre3.
    {
        float bc1[kTileU], wc2[kTileU], gwc2[kTileU] = {}, v[kTileE][kTileU];
        ld4(vec + kBwdVecBc1 * Hp + k0, bc1);
        tile_product<Hp>(sm + L.wc1t, Me, bc1, k0, e0, v);
        ld4(vec + kBwdVecWc2 * Hp + k0, wc2);
        const float cr = net.coords_range;
#pragma unroll
        for (int e = 0; e < kTileE; ++e) {
            float dot = 0.0f;
#pragma unroll
            for (int u = 0; u < kTileU; ++u) dot += wc2[u] * silu(v[e][u]);
            const float c = unit_lanes_sum<Hp>(dot);
            const float th = net.use_tanh ? tanhf(c) : 0.0f;
            const float phi = net.use_tanh ? cr * th : c;
            const EdgeGeom<D> g = edge_geom<D>(sm, L, ic, js[e]);
            const float sq = sqrtf(g.r + kCoordEps);
            const float inv = 1.0f / (sq + 1.0f);
            float gphi = 0.0f, ginv = 0.0f;
#pragma unroll
            for (int c2 = 0; c2 < D; ++c2) {
                const float gxi = sm[Y.gx + ic * D + c2];
                gphi += gxi * g.diff[c2] * inv;
                ginv += gxi * phi * g.diff[c2];
            }
            const float gc = valid[e] ? (net.use_tanh ? gphi * cr * (1.0f - th * th) : gphi) : 0.0f;
            if (ug == 0) {
                float* es = esc + (e0 + e) * kBwdEdgeScalars;
                es[kBwdEscPhinv] = valid[e] ? phi * inv : 0.0f;
                es[kBwdEscGr] = valid[e] ? ginv * (-inv * inv / (2.0f * sq)) : 0.0f;
            }
#pragma unroll
            for (int u = 0; u < kTileU; ++u) {
                gwc2[u] += gc * silu(v[e][u]);
                v[e][u] = gc * wc2[u] * silu_grad(v[e][u]);
            }
        }
        store_tile<Hp>(Gzc, v, k0, e0);
        accumulate_units<Hp>(acc + kBwdAccWc2 * Hp, gwc2, k0, eg);
    }
    __syncwarp();

    // gme = dL/dM_i + Wc1^T gzc; through the gate: gz2 = dL/dpre2.
    {
        float v[kTileE][kTileU], gm[kTileU] = {};
        if (gM != nullptr) ld4(gM + ic * Hp + k0, gm);
#pragma unroll
        for (int e = 0; e < kTileE; ++e)
#pragma unroll
            for (int u = 0; u < kTileU; ++u) v[e][u] = valid[e] ? gm[u] : 0.0f;
        tile_product_t<Hp>(sm + L.wc1t, Gzc, k0, e0, v);
        float pre2[kTileE][kTileU], wa[kTileU], gwa[kTileU] = {}, gba = 0.0f;
#pragma unroll
        for (int u = 0; u < kTileU; ++u) {
            float col[kTileE];
            ld4(Gz1 + (k0 + u) * Tile::kEdges + e0, col);
#pragma unroll
            for (int e = 0; e < kTileE; ++e) pre2[e][u] = col[e];
        }
        ld4(vec + kBwdVecWa * Hp + k0, wa);
#pragma unroll
        for (int e = 0; e < kTileE; ++e) {
            const float gate = esc[(e0 + e) * kBwdEdgeScalars + kBwdEscGate];
            float gza = 0.0f;  // dL/d(attention logit)
            if (net.attention) {
                float dot = 0.0f;
#pragma unroll
                for (int u = 0; u < kTileU; ++u) dot += v[e][u] * silu(pre2[e][u]);
                gza = unit_lanes_sum<Hp>(dot) * gate * (1.0f - gate);
            }
            gba += gza;
#pragma unroll
            for (int u = 0; u < kTileU; ++u) {
                gwa[u] += gza * silu(pre2[e][u]);
                v[e][u] = (v[e][u] * gate + gza * wa[u]) * silu_grad(pre2[e][u]);
            }
        }
        store_tile<Hp>(Gz2, v, k0, e0);
        if (net.attention) {
            accumulate_units<Hp>(acc + kBwdAccWa * Hp, gwa, k0, eg);
            gba = edge_groups_sum<Hp>(gba);  // the lanes of an edge group hold the same gza
            if (lane == 0) acc[kBwdAccBa * Hp] += gba;
        }
    }
    __syncwarp();

    // gz1 = SiLU'(pre1) W2^T gz2; pre1 feeds P_i, Q_j, r and a.
    {
        float v[kTileE][kTileU] = {};
        tile_product_t<Hp>(sm + L.w2t, Gz2, k0, e0, v);
        float Pi[kTileU], w1r[kTileU], w1a[kTileU];
        ld4(sm + L.P + ic * Hp + k0, Pi);
        ld4(vec + kBwdVecW1r * Hp + k0, w1r);
        ld4(vec + kBwdVecW1a * Hp + k0, w1a);
        float gw1r[kTileU] = {}, gw1a[kTileU] = {}, gp[kTileU] = {};
        float tx[D] = {}, tx0[D] = {};
#pragma unroll
        for (int e = 0; e < kTileE; ++e) {
            const EdgeGeom<D> g = edge_geom<D>(sm, L, ic, js[e]);
            float q[kTileU];
            ld4(sm + L.Q + js[e] * Hp + k0, q);
            float grp = 0.0f, gap = 0.0f;
#pragma unroll
            for (int u = 0; u < kTileU; ++u) {
                const float pre1 = Pi[u] + q[u] + w1r[u] * g.r + w1a[u] * g.a;
                const float gz1 = valid[e] ? silu_grad(pre1) * v[e][u] : 0.0f;
                v[e][u] = gz1;
                gp[u] += gz1;
                gw1r[u] += gz1 * g.r;
                gw1a[u] += gz1 * g.a;
                grp += gz1 * w1r[u];
                gap += gz1 * w1a[u];
            }
            const float* es = esc + (e0 + e) * kBwdEdgeScalars;
            const float gre = es[kBwdEscGr] + unit_lanes_sum<Hp>(grp);
            const float ga = unit_lanes_sum<Hp>(gap);
            const float phinv = es[kBwdEscPhinv];
#pragma unroll
            for (int c = 0; c < D; ++c) {
                const float gxi = sm[Y.gx + ic * D + c];
                const float gd = valid[e] ? gxi * phinv + 2.0f * g.diff[c] * gre : 0.0f;
                const float gd0 = valid[e] ? 2.0f * g.diff0[c] * ga : 0.0f;
                tx[c] += gd;
                tx0[c] += gd0;
                if (ug == 0) {
                    esc[(e0 + e) * kBwdEdgeScalars + c] = gd;
                    esc[(e0 + e) * kBwdEdgeScalars + D + c] = gd0;
                }
            }
        }
        store_tile<Hp>(Gz1, v, k0, e0);
        accumulate_units<Hp>(acc + kBwdAccW1r * Hp, gw1r, k0, eg);
        accumulate_units<Hp>(acc + kBwdAccW1a * Hp, gw1a, k0, eg);
        accumulate_units<Hp>(acc + kBwdAccP * Hp, gp, k0, eg);
        // The target's share of the coordinate gradients (the lanes ug of a group agree).
#pragma unroll
        for (int c = 0; c < D; ++c) {
            tx[c] = edge_groups_sum<Hp>(tx[c]);
            tx0[c] = edge_groups_sum<Hp>(tx0[c]);
        }
        if (lane == 0 && act) {
#pragma unroll
            for (int c = 0; c < D; ++c) {
                sm[Y.gxacc + i * D + c] += tx[c];
                sm[Y.gx0 + i * D + c] += tx0[c];
            }
        }
    }
}

// The block's part of a round (between two barriers): the round's edges of all warps added to
// the W2 and Wc1 gradients (and b2, bc1) as one product over the edges, warps and edges in
// order; the sources' shares of gQ, gx and gx0.
template <int Hp, int D>
__device__ __forceinline__ void round_sums(const EgnnNet& net, float* sm, const BackwardLayout& Y,
                                           int j0, float* gw2, float* gb2, float* gwc1,
                                           float* gbc1) {
    constexpr int E = EdgeTile<Hp>::kEdges, Q = Hp / 4, W = kBwdSlots * kBwdSlotFloats;
    const int n = net.n, H = net.hidden;
    const float* base = sm + Y.slots;
    for (int t = threadIdx.x; t < 2 * Q * Q; t += blockDim.x) {
        const int mat = t / (Q * Q), tt = t % (Q * Q);
        const int o0 = 4 * (tt / Q), m0 = 4 * (tt % Q);
        if (o0 >= H || m0 >= H) continue;
        const float* G = base + (mat ? kBwdGzc : kBwdGz2) * kBwdSlotFloats;
        const float* S = base + (mat ? kBwdMe : kBwdS1) * kBwdSlotFloats;
        float acc[4][4] = {}, bs[4] = {};
#pragma unroll 2
        for (int w = 0; w < kWarps; ++w) {
#pragma unroll
            for (int e = 0; e < E; e += 4) {
                float g[4][4], s[4][4];
#pragma unroll
                for (int u = 0; u < 4; ++u) ld4(G + w * W + (o0 + u) * E + e, g[u]);
#pragma unroll
                for (int u = 0; u < 4; ++u) ld4(S + w * W + (m0 + u) * E + e, s[u]);
#pragma unroll
                for (int ee = 0; ee < 4; ++ee)
#pragma unroll
                    for (int u = 0; u < 4; ++u) {
                        bs[u] += g[u][ee];
#pragma unroll
                        for (int v = 0; v < 4; ++v) acc[u][v] += g[u][ee] * s[v][ee];
                    }
            }
        }
        float* dst = mat ? gwc1 : gw2;
        float* bias = mat ? gbc1 : gb2;
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const int o = o0 + u;
            if (o >= H) continue;
#pragma unroll
            for (int v = 0; v < 4; ++v)
                if (m0 + v < H) dst[o * H + m0 + v] += acc[u][v];
            if (m0 == 0) bias[o] += bs[u];
        }
    }
    // gQ_j += sum over the warps of gz1_ij (M holds gQ in the edge phase).
    for (int t = threadIdx.x; t < Hp * E / 4; t += blockDim.x) {
        const int k = t / (E / 4), e = 4 * (t % (E / 4));
        float s[4] = {};
        for (int w = 0; w < kWarps; ++w) {
            float g[4];
            ld4(base + w * W + kBwdGz1 * kBwdSlotFloats + k * E + e, g);
#pragma unroll
            for (int q = 0; q < 4; ++q) s[q] += g[q];
        }
#pragma unroll
        for (int q = 0; q < 4; ++q)
            if (j0 + e + q < n) sm[Y.L.M + (j0 + e + q) * Hp + k] += s[q];
    }
    // The sources' coordinate gradients: x_j and x0_j enter d_ij, d0_ij with a minus sign.
    if (threadIdx.x >= blockDim.x - E * 2 * D) {
        const int t = threadIdx.x - (blockDim.x - E * 2 * D);
        const int e = t / (2 * D), c = t % (2 * D);
        if (j0 + e < n) {
            float s = 0.0f;
            for (int w = 0; w < kWarps; ++w)
                s += sm[Y.esc + (w * kBwdMaxEdges + e) * kBwdEdgeScalars + c];
            if (c < D)
                sm[Y.gxacc + (j0 + e) * D + c] -= s;
            else
                sm[Y.gx0 + (j0 + e) * D + c - D] -= s;
        }
    }
}

// The node MLP backwards for every node: h' = h + Wn2 SiLU(zn) + bn2, zn = Wn1 [h, M] + bn1.
// On entry gh = dL/dh'; on exit gh = dL/dh through this MLP and the residual, gM = dL/dM
// (global, rows of Hp, zero past H), and the gradients of Wn1, bn1, Wn2, bn2 are added.
// Uses P (the hidden layer) and Q (SiLU'(zn), then gzn) as scratch. Block-wide; the caller
// synchronises before; it synchronises after.
template <int Hp>
__device__ inline void node_backward(const EgnnNet& net, const EgnnLayerPtrs& p, float* sm,
                                     const BackwardLayout& Y, float* __restrict__ gM, float* grad,
                                     const float* pbase, int warp, int lane) {
    const PrimalLayout& L = Y.L;
    const int n = net.n, H = net.hidden;
    const int k0 = kTileU * (lane % EdgeTile<Hp>::kUnitLanes);
    float* A = sm + L.w2t;
    float* Bw = sm + L.wc1t;
    stage_transposed<Hp>(A, p.wn1, 2 * H, 0, H);
    stage_transposed<Hp>(Bw, p.wn1, 2 * H, H, H);
    __syncthreads();
    for_node_tiles<Hp>(n, warp, lane, [&](const int(&rows)[kTileE], const bool(&valid)[kTileE]) {
        float acc[kTileE][kTileU];
        init_tile(acc, p.bn1, k0, H);
        rows_product<Hp>(A, sm + L.h, rows, k0, acc);
        rows_product<Hp>(Bw, sm + L.M, rows, k0, acc);
#pragma unroll
        for (int e = 0; e < kTileE; ++e) {
            if (!valid[e]) continue;
            float hid[kTileU], slope[kTileU];
#pragma unroll
            for (int u = 0; u < kTileU; ++u) {
                hid[u] = silu(acc[e][u]);
                slope[u] = silu_grad(acc[e][u]);
            }
            st4(sm + L.P + rows[e] * Hp + k0, hid);
            st4(sm + L.Q + rows[e] * Hp + k0, slope);
        }
    });
    __syncthreads();
    stage_straight<Hp>(A, p.wn2, H, 0, H);
    __syncthreads();
    // gzn = SiLU'(zn) Wn2^T gh, into Q.
    for_node_tiles<Hp>(n, warp, lane, [&](const int(&rows)[kTileE], const bool(&valid)[kTileE]) {
        float acc[kTileE][kTileU];
        init_tile(acc, nullptr, k0, H);
        rows_product<Hp>(A, sm + Y.gh, rows, k0, acc);
#pragma unroll
        for (int e = 0; e < kTileE; ++e) {
            if (!valid[e]) continue;
            float s[kTileU];
            ld4(sm + L.Q + rows[e] * Hp + k0, s);
#pragma unroll
            for (int u = 0; u < kTileU; ++u) s[u] *= acc[e][u];
            st4(sm + L.Q + rows[e] * Hp + k0, s);
        }
    });
    __syncthreads();
    rows_outer<Hp>(sm + Y.gh, sm + L.P, n, grad_of(grad, pbase, p.wn2), H, 0, H,
                   grad_of(grad, pbase, p.bn2));
    rows_outer<Hp>(sm + L.Q, sm + L.h, n, grad_of(grad, pbase, p.wn1), 2 * H, 0, H,
                   grad_of(grad, pbase, p.bn1));
    rows_outer<Hp>(sm + L.Q, sm + L.M, n, grad_of(grad, pbase, p.wn1), 2 * H, H, H, nullptr);
    stage_straight<Hp>(A, p.wn1, 2 * H, 0, H);
    stage_straight<Hp>(Bw, p.wn1, 2 * H, H, H);
    __syncthreads();
    // gh += Wn1a^T gzn, gM = Wn1b^T gzn.
    for_node_tiles<Hp>(n, warp, lane, [&](const int(&rows)[kTileE], const bool(&valid)[kTileE]) {
        float acc[kTileE][kTileU];
        init_tile(acc, nullptr, k0, H);
        rows_product<Hp>(A, sm + L.Q, rows, k0, acc);
#pragma unroll
        for (int e = 0; e < kTileE; ++e) {
            if (!valid[e]) continue;
            float g[kTileU];
            ld4(sm + Y.gh + rows[e] * Hp + k0, g);
#pragma unroll
            for (int u = 0; u < kTileU; ++u) g[u] += acc[e][u];
            st4(sm + Y.gh + rows[e] * Hp + k0, g);
        }
        init_tile(acc, nullptr, k0, H);
        rows_product<Hp>(Bw, sm + L.Q, rows, k0, acc);
#pragma unroll
        for (int e = 0; e < kTileE; ++e)
            if (valid[e]) st4(gM + rows[e] * Hp + k0, acc[e]);
    });
    __syncthreads();
}

// Hp = tile_hidden(net.hidden) and D = net.d: backward_kernel_for picks the instance. At most 128
// registers, no local memory.
template <int Hp, int D>
__global__ void __launch_bounds__(kThreads, 2)
    egnn_backward_kernel(EgnnNet net, const float* __restrict__ pbase, int64_t param_count,
                         int64_t B, const float* __restrict__ x, const float* __restrict__ t,
                         const float* __restrict__ dL_dv, float* __restrict__ dL_dx,
                         float* __restrict__ workspace) {
    EQFLOW_DYNAMIC_SHARED(float, sm);
    using Tile = EdgeTile<Hp>;
    const int n = net.n, H = net.hidden, Lyr = net.layers, nd = n * D, nH = n * Hp;
    const BackwardLayout Y = backward_layout(n, D, Hp);
    const PrimalLayout& L = Y.L;
    const SlotLayout S = slot_layout(n, D, H, Lyr, param_count);
    float* slot = workspace + blockIdx.x * S.total;
    float* grad = slot + S.grad;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int k0 = kTileU * (lane % Tile::kUnitLanes);
    float* ws = sm + Y.slots + warp * kBwdSlots * kBwdSlotFloats;  // this warp's slots
    float* wacc = sm + Y.acc + warp * kBwdAccRows * Hp;
    float* wesc = sm + Y.esc + warp * kBwdMaxEdges * kBwdEdgeScalars;

    // The block's sample index lives in shared memory rather than in a register held through
    // the whole sample (at the 128-register cap, the d = 3 and Hp = 128 instances spilled it to
    // local memory); an int: the launcher checks B.
    int* sample = reinterpret_cast<int*>(sm + Y.sample);
    if (threadIdx.x == 0) *sample = static_cast<int>(blockIdx.x);
    __syncthreads();
    // Read where it is needed, not held (volatile: a fresh shared load each time).
    auto sample_index = [&] { return static_cast<int64_t>(*static_cast<volatile int*>(sample)); };
    while (*sample < B) {
        // ---- 1. forward (register-tiled), keeping h^l, x^l, M^l ----
        load_sample(net, x + sample_index() * nd, t[sample_index()], sm, L);
        __syncthreads();
        for (int l = 0; l < Lyr; ++l) {
            const EgnnLayerPtrs& p = net.layer[l];
            // x^l and x^{l+1} alternate between x and x_next (from l, not carried in registers).
            const int cur = (l & 1) ? L.xn : L.x, nxt = (l & 1) ? L.x : L.xn;
            for (int k = threadIdx.x; k < nH; k += blockDim.x)
                slot[S.hs + static_cast<size_t>(l) * nH + k] = sm[L.h + k];
            for (int k = threadIdx.x; k < nd; k += blockDim.x)
                slot[S.xs + static_cast<size_t>(l) * nd + k] = sm[cur + k];
            prepare_layer_tiled<Hp>(net, p, sm, L, warp, lane);
            __syncthreads();
            const TileVectors tv = tile_vectors(net, p, k0);
            layer_edges_tiled<Hp, D>(net, sm, L, tv, cur, nxt, warp, lane, ws);
            __syncthreads();
            for (int k = threadIdx.x; k < nH; k += blockDim.x)
                slot[S.Ms + static_cast<size_t>(l) * nH + k] = sm[L.M + k];
            if (l + 1 < Lyr) node_layer_tiled<Hp>(net, p, sm, L, warp, lane);
            __syncthreads();
        }

        // ---- 2. seed: v = x^L - x^0 - mean  =>  dL/dx^L = g - mean(g), dL/dx^0 gets -(g -
        // mean(g)) ----
        const float* g = dL_dv + sample_index() * nd;
        for (int idx = threadIdx.x; idx < nd; idx += blockDim.x) {
            const int c = idx % D;
            float mean = 0.0f;
            for (int i = 0; i < n; ++i) mean += g[i * D + c];
            mean /= static_cast<float>(n);
            sm[Y.gx + idx] = g[idx] - mean;
            sm[Y.gx0 + idx] = -(g[idx] - mean);
        }
        for (int k = threadIdx.x; k < nH; k += blockDim.x) sm[Y.gh + k] = 0.0f;

        // ---- 3. layers backwards ----
        for (int l = Lyr - 1; l >= 0; --l) {
            const EgnnLayerPtrs& p = net.layer[l];
            const bool has_node = l + 1 < Lyr;  // the last layer has no node MLP
            for (int k = threadIdx.x; k < nH; k += blockDim.x) {
                sm[L.h + k] = slot[S.hs + static_cast<size_t>(l) * nH + k];
                sm[L.M + k] = slot[S.Ms + static_cast<size_t>(l) * nH + k];
            }
            for (int k = threadIdx.x; k < nd; k += blockDim.x)
                sm[L.x + k] = slot[S.xs + static_cast<size_t>(l) * nd + k];
            __syncthreads();

            // 3a. the node MLP: gh becomes dL/dh^l through it, gM = dL/dM^l.
            float* gM = slot + S.gM;
            if (has_node) node_backward<Hp>(net, p, sm, Y, gM, grad, pbase, warp, lane);

            // 3b. edges, in rounds (target group, source tile).
            prepare_layer_tiled<Hp>(net, p, sm, L, warp, lane);  // P, Q; W2^T, Wc1^T
            stage_backward_vectors<Hp>(net, p, sm + Y.vec);
            for (int k = threadIdx.x; k < nH; k += blockDim.x) sm[L.M + k] = 0.0f;  // gQ
            for (int k = threadIdx.x; k < nd; k += blockDim.x) sm[Y.gxacc + k] = 0.0f;
            for (int k = threadIdx.x; k < kWarps * kBwdAccRows * Hp; k += blockDim.x)
                sm[Y.acc + k] = 0.0f;
            __syncthreads();
            float* gw2 = grad_of(grad, pbase, p.w2);
            float* gb2 = grad_of(grad, pbase, p.b2);
            float* gwc1 = grad_of(grad, pbase, p.wc1);
            float* gbc1 = grad_of(grad, pbase, p.bc1);
            const float ba = net.attention ? p.ba[0] : 0.0f;
            for (int g0 = 0; g0 < n; g0 += kWarps) {
                const int i = g0 + warp;
                for (int k = 4 * lane; k < Hp; k += 128) {
                    const float z[4] = {};
                    st4(wacc + kBwdAccP * Hp + k, z);
                }
                __syncwarp();
                for (int j0 = 0; j0 < n; j0 += Tile::kEdges) {
                    edge_tile_backward<Hp, D>(net, sm, Y, has_node ? gM : nullptr, ba, i, j0, lane,
                                              ws, wacc, wesc);
                    __syncthreads();
                    round_sums<Hp, D>(net, sm, Y, j0, gw2, gb2, gwc1, gbc1);
                    __syncthreads();
                }
                // The target's gP is complete: it replaces P_i (read by this warp only).
                if (i < n)
                    for (int k = 4 * lane; k < Hp; k += 128) {
                        float v[4];
                        ld4(wacc + kBwdAccP * Hp + k, v);
                        st4(sm + L.P + i * Hp + k, v);
                    }
            }
            __syncthreads();

            // 3c. the per-unit sums of the warps, in warp order; the per-node parts of W1
            // (P = W1a h + b1, Q = W1b h); dL/dh^l and dL/dx^l.
            const int W1 = 2 * H + 2;
            float* gw1 = grad_of(grad, pbase, p.w1);
            for (int k = threadIdx.x; k < H; k += blockDim.x) {
                float s[kBwdAccRows] = {};
                for (int w = 0; w < kWarps; ++w)
#pragma unroll
                    for (int r = 0; r < kBwdAccRows; ++r)
                        s[r] += sm[Y.acc + (w * kBwdAccRows + r) * Hp + k];
                grad_of(grad, pbase, p.wc2)[k] += s[kBwdAccWc2];
                gw1[k * W1 + 2 * H] += s[kBwdAccW1r];
                gw1[k * W1 + 2 * H + 1] += s[kBwdAccW1a];
                if (net.attention) {
                    grad_of(grad, pbase, p.wa)[k] += s[kBwdAccWa];
                    if (k == 0) grad_of(grad, pbase, p.ba)[0] += s[kBwdAccBa];
                }
            }
            rows_outer<Hp>(sm + L.P, sm + L.h, n, gw1, W1, 0, H, grad_of(grad, pbase, p.b1));
            rows_outer<Hp>(sm + L.M, sm + L.h, n, gw1, W1, H, H, nullptr);
            stage_straight<Hp>(sm + L.w2t, p.w1, W1, 0, H);
            stage_straight<Hp>(sm + L.wc1t, p.w1, W1, H, H);
            for (int k = threadIdx.x; k < nd; k += blockDim.x) sm[Y.gx + k] += sm[Y.gxacc + k];
            __syncthreads();
            for_node_tiles<Hp>(n, warp, lane,
                               [&](const int(&rows)[kTileE], const bool(&valid)[kTileE]) {
                                   float acc[kTileE][kTileU];
                                   init_tile(acc, nullptr, k0, H);
                                   rows_product<Hp>(sm + L.w2t, sm + L.P, rows, k0, acc);
                                   rows_product<Hp>(sm + L.wc1t, sm + L.M, rows, k0, acc);
#pragma unroll
                                   for (int e = 0; e < kTileE; ++e) {
                                       if (!valid[e]) continue;
                                       float gh[kTileU];
                                       ld4(sm + Y.gh + rows[e] * Hp + k0, gh);
#pragma unroll
                                       for (int u = 0; u < kTileU; ++u) gh[u] += acc[e][u];
                                       st4(sm + Y.gh + rows[e] * Hp + k0, gh);
                                   }
                               });
            __syncthreads();
        }

        // ---- 4. embedding and the input gradient ----
        {
            const int F = net.in_features;
            float* gemb_w = grad_of(grad, pbase, net.emb_w);
            float* gemb_b = grad_of(grad, pbase, net.emb_b);
            const float tb = t[sample_index()];
            for (int e = threadIdx.x; e < H * F; e += blockDim.x) {
                const int k = e / F, f = e % F;
                float acc = 0.0f;
                for (int i = 0; i < n; ++i) {
                    const float feat =
                        f == F - 1 ? tb : (net.types != nullptr && net.types[i] == f ? 1.0f : 0.0f);
                    acc += sm[Y.gh + i * Hp + k] * feat;
                }
                gemb_w[e] += acc;
            }
            for (int k = threadIdx.x; k < H; k += blockDim.x) {
                float acc = 0.0f;
                for (int i = 0; i < n; ++i) acc += sm[Y.gh + i * Hp + k];
                gemb_b[k] += acc;
            }
            if (dL_dx != nullptr)
                for (int k = threadIdx.x; k < nd; k += blockDim.x)
                    dL_dx[sample_index() * nd + k] = sm[Y.gx + k] + sm[Y.gx0 + k];
        }
        __syncthreads();  // the next sample reuses shared memory
        if (threadIdx.x == 0) *sample += static_cast<int>(gridDim.x);
        __syncthreads();
    }
}

using BackwardKernel = void (*)(EgnnNet, const float*, int64_t, int64_t, const float*, const float*,
                                const float*, float*, float*);

template <int D>
inline BackwardKernel backward_kernel_for_dim(int Hp) {
    if (Hp == 32) return &egnn_backward_kernel<32, D>;
    if (Hp == 64) return &egnn_backward_kernel<64, D>;
    return &egnn_backward_kernel<128, D>;
}

// The instance of egnn_backward_kernel for net's shapes (1 <= d <= 3, H <= kEgnnMaxHidden).
inline BackwardKernel backward_kernel_for(const EgnnNet& net) {
    const int Hp = tile_hidden(net.hidden);
    if (net.d == 1) return backward_kernel_for_dim<1>(Hp);
    if (net.d == 2) return backward_kernel_for_dim<2>(Hp);
    return backward_kernel_for_dim<3>(Hp);
}

// dL_dparams[p] += sum_s slot_s.grad[p], in slot order.
__global__ void __launch_bounds__(kThreads)
    reduce_slots_kernel(const float* __restrict__ workspace, size_t slot_floats, size_t grad_offset,
                        int slots, int64_t param_count, float* __restrict__ dL_dparams) {
    const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (p >= param_count) return;
    float acc = 0.0f;
    for (int s = 0; s < slots; ++s) acc += workspace[s * slot_floats + grad_offset + p];
    dL_dparams[p] += acc;
}

inline size_t backward_smem_bytes(const EgnnNet& net) {
    return static_cast<size_t>(backward_layout(net.n, net.d, tile_hidden(net.hidden)).total) *
           sizeof(float);
}

}  // namespace
}  // namespace eqflow::cuda::egnn_detail
