// kernels/egnn_kernels.cuh: device code of the fused EGNN forward and exact divergence.
// The launchers are in kernels/egnn.cu; emu/ runs this same code on the CPU.
//
//
// Math (docs/design.md section 4), per layer, for target particle i and source j != i:
//   d_ij = x_i - x_j,  r_ij = |d_ij|^2,  a_ij = |x0_i - x0_j|^2
//   pre1 = P_i + Q_j + w1r r_ij + w1a a_ij      with P_i = W1a h_i + b1, Q_j = W1b h_j
//   m_ij = SiLU(W2 SiLU(pre1) + b2) * sigmoid(wa . m + ba)          (attention optional)
//   phi_ij = cr tanh(wc2 . SiLU(Wc1 m_ij + bc1))                    (tanh optional)
//   x_i' = x_i + sum_j d_ij / (sqrt(r_ij + 1e-8) + 1) phi_ij ;  M_i = sum_j m_ij
//   h_i' = h_i + Wn2 SiLU(Wn1 [h_i, M_i] + bn1) + bn2               (skipped after the last layer:
//                                                                    it cannot change v)
//   v = x^L - x^0 with its particle mean removed.
//
// Work decomposition (egnn_forward_kernel): one block of kThreads = 256 threads (8 warps) per
// sample. The sample's whole state lives in shared memory; warp w owns target particles
// i = w, w + 8, ... and walks the sources j in tiles (egnn_common.cuh, "Register-tiled edge
// MLPs"): each lane holds 4 edges x 4 hidden units of the tile in registers, and the edge MLPs
// are register-tiled products with 128-bit shared loads (2 loads per 16 FMAs). Every sum (M_i,
// the coordinate update) is accumulated in a fixed order by the one warp that owns i: results
// are deterministic run to run. The kernel is compiled for Hp = 32, 64, 128 (H rounded up,
// padded with zeros) and d = 1, 2, 3. No n^2 x H edge tensor ever leaves shared memory or
// registers.
//
// Shared memory per block (floats): 3 n d (x0, x, x_next) + 2 n H (h, M) + 2 n Hp (P, Q) +
// 2 Hp^2 (W2^T, Wc1^T) + 8 x 512 (a warp's tile of activations, Hp x kEdges). LJ55 (n = 55,
// d = 3, H = 64): 105 KB, two blocks per SM on sm_90. The launcher raises the dynamic
// shared-memory limit and refuses sizes above the device's.
//
// FLOPs per sample and layer: edges n(n-1) x (2 H^2 (W2) + 2 H^2 (Wc1) + ~12 H) + nodes
// n x (4 H^2 (P, Q) + 4 H^2 + 2 H^2 (node MLP)).
//
// egnn_divergence_kernel propagates forward-mode tangents along coordinate directions
// e_p, p = i0 d + a0, through the same computation: each block takes a sample b and a chunk of
// kTangents directions, recomputes the primal pass alongside (one primal per chunk; the
// tangent work is kTangents times larger, so the overhead is about 1/kTangents), and writes
// sum_{p in chunk} dv_p/dx_p. A second kernel sums the chunks of each sample in order. Its edge
// MLPs are register-tiled like the forward's, with the primal and the kTangents tangents of an
// edge as the 1 + kTangents columns of one product, so that each weight load feeds all of them
// (section "Exact divergence by forward-mode tangents, register-tiled" below; 4 shared loads
// per 36 FMAs). Tangent state: dx, dx_next, dx0 [kTangents][n][d] in shared memory; dh, dP,
// dQ, dM [n][kTangents][Hp] in the caller's global workspace (one slot per resident block;
// blocks loop over work items). Compiled for Hp = 32, 64, 128 and d = 1, 2, 3, at most 128
// registers and no local memory. Shared memory per block (floats): 2 Hp^2 + 6 Hp + 8 x 1152
// (per-warp scratch) + 3 n d + 4 n Hp + 3 x 8 n d; LJ55 (H 64): 145 KB, one block per SM
// (as before the tiling).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kernels/device_compat.cuh"
#include "kernels/egnn.cuh"
#include "kernels/egnn_common.cuh"

namespace eqflow::cuda::egnn_detail {
namespace {  // one copy per including file: internal linkage

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------

// Hp = tile_hidden(net.hidden) and D = net.d: forward_kernel_for picks the instance. At most 128
// registers (two blocks per SM need no more).
template <int Hp, int D>
__global__ void __launch_bounds__(kThreads, 2)
    egnn_forward_kernel(EgnnNet net, const float* __restrict__ x, const float* __restrict__ t,
                        float* __restrict__ v) {
    EQFLOW_DYNAMIC_SHARED(float, sm);
    const int n = net.n;
    const PrimalLayout L = tiled_primal_layout(n, D, net.hidden);
    const int64_t b = blockIdx.x;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int k0 = kTileU * (lane % EdgeTile<Hp>::kUnitLanes);
    float* S = sm + L.scratch + warp * kTileScratch;

    load_sample(net, x + b * n * D, t[b], sm, L);
    int cur = L.x, nxt = L.xn;  // ping-pong coordinate buffers
    __syncthreads();
    for (int l = 0; l < net.layers; ++l) {
        const EgnnLayerPtrs& p = net.layer[l];
        prepare_layer_tiled<Hp>(net, p, sm, L, warp, lane);
        __syncthreads();
        const TileVectors tv = tile_vectors(net, p, k0);
        layer_edges_tiled<Hp, D>(net, sm, L, tv, cur, nxt, warp, lane, S);
        __syncthreads();
        if (l + 1 < net.layers) node_layer_tiled<Hp>(net, p, sm, L, warp, lane);
        const int tmp = cur;
        cur = nxt;
        nxt = tmp;
        __syncthreads();
    }
    write_field(net, sm, L, sm + cur, v + b * n * D);
}

using ForwardKernel = void (*)(EgnnNet, const float*, const float*, float*);

template <int D>
inline ForwardKernel forward_kernel_for_dim(int Hp) {
    if (Hp == 32) return &egnn_forward_kernel<32, D>;
    if (Hp == 64) return &egnn_forward_kernel<64, D>;
    return &egnn_forward_kernel<128, D>;
}

// The instance of egnn_forward_kernel for net's shapes (1 <= d <= 3, H <= kEgnnMaxHidden).
inline ForwardKernel forward_kernel_for(const EgnnNet& net) {
    const int Hp = tile_hidden(net.hidden);
    if (net.d == 1) return forward_kernel_for_dim<1>(Hp);
    if (net.d == 2) return forward_kernel_for_dim<2>(Hp);
    return forward_kernel_for_dim<3>(Hp);
}

// ---------------------------------------------------------------------------------------------
// Exact divergence by forward-mode tangents, register-tiled
//
// A block takes a sample and a chunk of K = kTangents directions. Each edge MLP product is one
// product with 1 + K columns per edge: the primal activations and the K tangents of the same
// edge, so every weight load feeds all of them. A warp takes the edges (i, j) of its target i
// in tiles of E = kEdgeGroups sources j = j0 + eg, one per edge group (EdgeTile<Hp>); lane
// (eg, ug) owns the micro-tile of kTileU units k0 + u (k0 = kTileU ug) x the 1 + K columns of
// edge eg. Per input unit m of a product: one LDS.128 of weights (W^T [Hp][Hp]), one LDS.32 of
// the primal column (Sp [Hp][E]) and K / 4 LDS.128 of the tangent columns (St [Hp][E][K]) feed
// kTileU (1 + K) = 36 FMAs.
//
// The edge's scalar tangents (of r_ij, a_ij and the coordinate update) are per direction, not
// per unit: lane ug < K of an edge group computes those of direction ug and shares dr, da by
// shuffles. Sums over units (the attention logit, the coordinate output c) are butterflies
// within the edge group; sums over j (M_i, dM_i, x_next_i, dx_next_i) are taken per tile (a
// butterfly across the edge groups) and added in tile order to the target's row in shared
// memory or the workspace by one lane: fixed orders, deterministic, and no accumulator
// registers held through the products (which take 36 + 13 of the 128).
//
// The node-wise tangent products (dP = W1a dh, dQ = W1b dh, the node MLP's tangent) are the
// forward's node tiles over the n K rows i K + tau of the tangent arrays, which live in the
// block's global workspace slot: dh, dP, dQ, dM, each [n][K][Hp].
// ---------------------------------------------------------------------------------------------

constexpr int kTangentCols = 1 + kTangents;  // a lane's columns: the primal and the tangents
static_assert(kTangents % 4 == 0 && kTangents <= 32 / 4,
              "tangent columns in LDS.128 groups; "
              "one direction per unit lane at Hp = 32");
// A warp's scratch: Sp [Hp][E] then St [Hp][E][K]; Hp E = 32 kTileU for every Hp.
constexpr int kTangentScratch = 32 * kTileU * kTangentCols;

// The layer's per-unit vectors in shared memory, rows of Hp (zero past H).
enum { kVecW1r = 0, kVecW1a, kVecB2, kVecBc1, kVecWc2, kVecWa, kVecRows };

// Shared memory of the divergence kernel (floats). The arrays of fixed size come first, at
// offsets that are compile-time constants in the kernel (immediates in its shared loads, no
// registers): W2^T, Wc1^T [Hp][Hp], the per-unit vectors [kVecRows][Hp], the warps' scratch
// [kWarps][kTangentScratch]; then the primal state of the tiled forward (x0, x, x_next [n][d];
// h, P, Q, M [n][Hp]) and the tangent coordinates (current, next, input) [kTangents][n][d].
struct TangentLayout {
    int dx, dxn, dx0, vec, total;
};

struct DivergenceLayout {
    PrimalLayout L;
    TangentLayout T;
};

__host__ __device__ inline DivergenceLayout divergence_layout(int n, int d, int Hp) {
    DivergenceLayout s{};
    int off = 0;
    auto take = [&](int count) {
        const int at = off;
        off += (count + 3) / 4 * 4;  // 16-byte alignment of every array
        return at;
    };
    s.L.hs = Hp;
    s.L.w2t = take(Hp * Hp);
    s.L.wc1t = take(Hp * Hp);
    s.T.vec = take(kVecRows * Hp);
    s.L.scratch = take(kWarps * kTangentScratch);
    s.L.x0 = take(n * d);
    s.L.x = take(n * d);
    s.L.xn = take(n * d);
    s.L.h = take(n * Hp);
    s.L.P = take(n * Hp);
    s.L.Q = take(n * Hp);
    s.L.M = take(n * Hp);
    s.T.dx = take(kTangents * n * d);
    s.T.dxn = take(kTangents * n * d);
    s.T.dx0 = take(kTangents * n * d);  // the input tangents: they move x0 too, and enter the trace
    s.L.total = s.T.total = off;
    return s;
}

// Global workspace of one block: dh, dP, dQ, dM, each [n][kTangents][Hp] (row i K + tau: the
// K directions of a node are consecutive, at compile-time strides).
__host__ __device__ inline size_t tangent_slot_floats(int n, int H) {
    return static_cast<size_t>(4) * kTangents * n * tile_hidden(H);
}

// The per-unit vectors of layer p into T.vec (block-wide; the caller synchronises).
template <int Hp>
__device__ inline void stage_vectors(const EgnnNet& net, const EgnnLayerPtrs& p, float* vec) {
    const int H = net.hidden, W1 = 2 * H + 2;
    for (int idx = threadIdx.x; idx < kVecRows * Hp; idx += blockDim.x) {
        const int row = idx / Hp, k = idx % Hp;
        float val = 0.0f;
        if (k < H) {
            switch (row) {
                case kVecW1r:
                    val = p.w1[k * W1 + 2 * H];
                    break;
                case kVecW1a:
                    val = p.w1[k * W1 + 2 * H + 1];
                    break;
                case kVecB2:
                    val = p.b2[k];
                    break;
                case kVecBc1:
                    val = p.bc1[k];
                    break;
                case kVecWc2:
                    val = p.wc2[k];
                    break;
                default:
                    val = net.attention ? p.wa[k] : 0.0f;
                    break;
            }
        }
        vec[idx] = val;
    }
}

// ap[u] = bias[u] + sum_m Wt[m][k0 + u] Sp[m][eg] and
// at[tau][u] = sum_m Wt[m][k0 + u] St[m][eg][tau], m in order.
template <int Hp>
__device__ __forceinline__ void tangent_tile_product(const float* Wt, const float* Sp,
                                                     const float* St, const float (&bias)[kTileU],
                                                     int k0, int eg, float (&ap)[kTileU],
                                                     float (&at)[kTangents][kTileU]) {
    constexpr int E = EdgeTile<Hp>::kEdgeGroups;
#pragma unroll
    for (int u = 0; u < kTileU; ++u) {
        ap[u] = bias[u];
#pragma unroll
        for (int tau = 0; tau < kTangents; ++tau) at[tau][u] = 0.0f;
    }
#pragma unroll 8
    for (int m = 0; m < Hp; ++m) {
        float w[kTileU], a[kTangents / 4][4];
        ld4(Wt + m * Hp + k0, w);
        const float s = Sp[m * E + eg];
#pragma unroll
        for (int q = 0; q < kTangents / 4; ++q) ld4(St + (m * E + eg) * kTangents + 4 * q, a[q]);
#pragma unroll
        for (int u = 0; u < kTileU; ++u) {
            ap[u] += w[u] * s;
#pragma unroll
            for (int tau = 0; tau < kTangents; ++tau) at[tau][u] += w[u] * a[tau / 4][tau % 4];
        }
    }
}

// The lane's primal column -> Sp[k0 + u][eg], tangent columns -> St[k0 + u][eg][tau].
template <int Hp>
__device__ __forceinline__ void store_tangent_tile(float* Sp, float* St, const float (&ap)[kTileU],
                                                   const float (&at)[kTangents][kTileU], int k0,
                                                   int eg) {
    constexpr int E = EdgeTile<Hp>::kEdgeGroups;
#pragma unroll
    for (int u = 0; u < kTileU; ++u) {
        Sp[(k0 + u) * E + eg] = ap[u];
#pragma unroll
        for (int q = 0; q < kTangents / 4; ++q) {
            float col[4];
#pragma unroll
            for (int c = 0; c < 4; ++c) col[c] = at[4 * q + c][u];
            st4(St + ((k0 + u) * E + eg) * kTangents + 4 * q, col);
        }
    }
}

// The warp's tiles of the count = n K tangent rows, as for_node_tiles: rows r0 + e0 + e with
// r0 = warp kEdges, (warp + kWarps) kEdges, ... Each tile's rows of the global arrays A (and B,
// when not null) are first copied to the warp's scratch S (zeros past count, and for a null A),
// so that the products read them from shared memory like the forward's:
// body(r0, rows, valid, SA, SB) with the lane's rows e0 + e of SA, SB ([kEdges][Hp] each).
template <int Hp, class Body>
__device__ __forceinline__ void for_tangent_row_tiles(int count, int warp, int lane, float* S,
                                                      const float* A, const float* B, Body body) {
    using Tile = EdgeTile<Hp>;
    constexpr int kRows = Tile::kEdges, kQuads = Hp / 4;
    static_assert(kRows * kQuads % 32 == 0, "whole quads per lane");
    static_assert(2 * kRows * Hp <= kTangentScratch, "two row tiles fit in a warp's scratch");
    float* SA = S;
    float* SB = S + kRows * Hp;
    const int e0 = kTileE * (lane / Tile::kUnitLanes);
    for (int r0 = warp * kRows; r0 < count; r0 += kWarps * kRows) {
        // Quad q = lane + 32 k of the tile: floats 4 q (row q / kQuads) of SA, SB.
#pragma unroll
        for (int k = 0; k < kRows * kQuads / 32; ++k) {
            const int off = 4 * (lane + 32 * k);
            const bool in = r0 + (lane + 32 * k) / kQuads < count;
            float a[4] = {}, b[4] = {};
            if (in && A != nullptr) ld4(A + r0 * Hp + off, a);
            st4(SA + off, a);
            if (B != nullptr) {
                if (in) ld4(B + r0 * Hp + off, b);
                st4(SB + off, b);
            }
        }
        __syncwarp();
        int rows[kTileE];
        bool valid[kTileE];
#pragma unroll
        for (int e = 0; e < kTileE; ++e) {
            rows[e] = e0 + e;
            valid[e] = r0 + e0 + e < count;
        }
        body(r0, rows, valid, static_cast<const float*>(SA), static_cast<const float*>(SB));
        __syncwarp();  // S is rewritten by the next tile
    }
}

// The edge (i, j)'s d_ij = x_i - x_j, r_ij, a_ij and their tangents along one direction, from
// the coordinates at sm + x, x0 and the direction's tangent planes at sm + dx, dx0.
template <int D>
struct EdgeGeometry {
    float diff[D], ddiff[D], r, a, dr, da;
};

template <int D>
__device__ __forceinline__ EdgeGeometry<D> edge_geometry(const float* sm, int x, int x0, int dx,
                                                         int dx0, int i, int j) {
    EdgeGeometry<D> g;
    g.r = g.a = g.dr = g.da = 0.0f;
#pragma unroll
    for (int c = 0; c < D; ++c) {
        g.diff[c] = sm[x + i * D + c] - sm[x + j * D + c];
        g.r += g.diff[c] * g.diff[c];
        const float d0 = sm[x0 + i * D + c] - sm[x0 + j * D + c];
        g.a += d0 * d0;
        g.ddiff[c] = sm[dx + i * D + c] - sm[dx + j * D + c];
        g.dr += 2.0f * g.diff[c] * g.ddiff[c];
        g.da += 2.0f * d0 * (sm[dx0 + i * D + c] - sm[dx0 + j * D + c]);
    }
    return g;
}

// The edge phase of one layer with its tangents, for the warp's targets i = warp, warp + kWarps,
// ...: M_i, x_next_i as layer_edges_tiled, and per direction tau
//   dM_i = sum_j dm_ij,  dx_next_i = dx_i + sum_j d(d_ij phi_ij / (sqrt(r_ij + eps) + 1)).
// Coordinates at cur / nxt, their tangents at dcur / dnxt ([K][n][D]); dP, dQ [n][K][Hp] are
// read, dM [n][K][Hp] written (global); ba: the attention bias. Sp, St: the warp's scratch.
template <int Hp, int D>
__device__ inline void layer_edges_tangent(const EgnnNet& net, float* sm, const PrimalLayout& L,
                                           const TangentLayout& T, int cur, int nxt, int dcur,
                                           int dnxt, const float* dP, const float* dQ, float* dM,
                                           float ba, int warp, int lane, float* Sp, float* St) {
    using Tile = EdgeTile<Hp>;
    constexpr int K = kTangents, E = Tile::kEdgeGroups;
    const int n = net.n, nd = n * D;
    const int ug = lane % Tile::kUnitLanes, eg = lane / Tile::kUnitLanes;
    const int k0 = kTileU * ug;
    const bool own = ug < K;        // the lane carries direction ug's scalar tangents
    const int tau0 = own ? ug : 0;  // (lanes ug >= K repeat direction 0, unused)
    const float* vec = sm + T.vec;
    const float cr = net.coords_range;
    const int dx = dcur + tau0 * nd, dx0 = T.dx0 + tau0 * nd;  // the lane's direction
    for (int i = warp; i < n; i += kWarps) {
        for (int j0 = 0; j0 < n; j0 += E) {
            const int j = j0 + eg;
            const bool valid = j < n && j != i;
            const int js = j < n ? j : i;  // a slot past n computes the edge (i, i), left out
            {
                const EdgeGeometry<D> g = edge_geometry<D>(sm, cur, L.x0, dx, dx0, i, js);
                const float r = g.r, a = g.a, dr = g.dr, da = g.da;
                // pre1 = P_i + Q_j + w1r r + w1a a; dpre1 = dP_i + dQ_j + w1r dr + w1a da.
                float P4[kTileU], Q4[kTileU], w1r[kTileU], w1a[kTileU];
                ld4(sm + L.P + i * Hp + k0, P4);
                ld4(sm + L.Q + js * Hp + k0, Q4);
                ld4(vec + kVecW1r * Hp + k0, w1r);
                ld4(vec + kVecW1a * Hp + k0, w1a);
                float g1[kTileU];
#pragma unroll
                for (int u = 0; u < kTileU; ++u) {
                    const float pre = P4[u] + Q4[u] + w1r[u] * r + w1a[u] * a;
                    Sp[(k0 + u) * E + eg] = silu(pre);
                    g1[u] = silu_grad(pre);
                }
                // Two directions at a time into St: unrolled further, the compiler would hoist
                // the global loads of all K and run out of registers.
#pragma unroll 2
                for (int tau = 0; tau < K; ++tau) {
                    // lane tau of the edge group
                    const float drt = __shfl_sync(0xffffffffu, dr, tau, Tile::kUnitLanes);
                    const float dat = __shfl_sync(0xffffffffu, da, tau, Tile::kUnitLanes);
                    float dp[kTileU], dq[kTileU];
                    ld4(dP + (i * K + tau) * Hp + k0, dp);
                    ld4(dQ + (js * K + tau) * Hp + k0, dq);
#pragma unroll
                    for (int u = 0; u < kTileU; ++u)
                        St[((k0 + u) * E + eg) * K + tau] =
                            g1[u] * (dp[u] + dq[u] + w1r[u] * drt + w1a[u] * dat);
                }
            }
            __syncwarp();
            // m_raw = SiLU(W2 s1 + b2) and its tangents, then the gate.
            float ap[kTileU], at[K][kTileU];
            {
                float b2[kTileU];
                ld4(vec + kVecB2 * Hp + k0, b2);
                tangent_tile_product<Hp>(sm + L.w2t, Sp, St, b2, k0, eg, ap, at);
            }
            {
                float wa[kTileU];
                ld4(vec + kVecWa * Hp + k0, wa);
                float zdot = 0.0f;
#pragma unroll
                for (int u = 0; u < kTileU; ++u) {
                    const float g = silu_grad(ap[u]);
                    ap[u] = silu(ap[u]);
                    zdot += wa[u] * ap[u];
#pragma unroll
                    for (int tau = 0; tau < K; ++tau) at[tau][u] *= g;
                }
                // m = m_raw gate, dm = dm_raw gate + m_raw dgate.
                const float gate = net.attention ? sigmoid(unit_lanes_sum<Hp>(zdot) + ba) : 1.0f;
                const float slope = gate * (1.0f - gate);
#pragma unroll
                for (int tau = 0; tau < K; ++tau) {
                    float dgate = 0.0f;
                    if (net.attention) {
                        float dot = 0.0f;
#pragma unroll
                        for (int u = 0; u < kTileU; ++u) dot += wa[u] * at[tau][u];
                        dgate = slope * unit_lanes_sum<Hp>(dot);
                    }
#pragma unroll
                    for (int u = 0; u < kTileU; ++u) at[tau][u] = at[tau][u] * gate + ap[u] * dgate;
                }
#pragma unroll
                for (int u = 0; u < kTileU; ++u) ap[u] *= gate;
            }
            __syncwarp();  // every lane has read Sp, St
            store_tangent_tile<Hp>(Sp, St, ap, at, k0, eg);
            // M_i += the tile's m and dM_i += its dm (the edge groups summed by a butterfly), in
            // shared memory and the workspace: (1 + K) kTileU accumulators would not fit in the
            // registers next to the products'.
            {
                float acc[kTileU];
#pragma unroll
                for (int u = 0; u < kTileU; ++u) acc[u] = edge_groups_sum<Hp>(valid ? ap[u] : 0.0f);
                if (eg == 0) {
                    float old[kTileU] = {};
                    if (j0 > 0) ld4(sm + L.M + i * Hp + k0, old);
#pragma unroll
                    for (int u = 0; u < kTileU; ++u) old[u] += acc[u];
                    st4(sm + L.M + i * Hp + k0, old);  // zero past H
                }
            }
#pragma unroll
            for (int tau = 0; tau < K; ++tau) {
#pragma unroll
                for (int u = 0; u < kTileU; ++u)
                    at[tau][u] = edge_groups_sum<Hp>(valid ? at[tau][u] : 0.0f);
                if (eg == 0) {
                    float* row = dM + (i * K + tau) * Hp + k0;
                    float acc[kTileU] = {};
                    if (j0 > 0) ld4(row, acc);
#pragma unroll
                    for (int u = 0; u < kTileU; ++u) acc[u] += at[tau][u];
                    st4(row, acc);
                }
            }
            __syncwarp();
            // c = wc2 . SiLU(Wc1 m + bc1) and its tangents; phi = cr tanh(c).
            {
                float bc1[kTileU];
                ld4(vec + kVecBc1 * Hp + k0, bc1);
                tangent_tile_product<Hp>(sm + L.wc1t, Sp, St, bc1, k0, eg, ap, at);
            }
            float wc2[kTileU];
            ld4(vec + kVecWc2 * Hp + k0, wc2);
            float cdot = 0.0f;
#pragma unroll
            for (int u = 0; u < kTileU; ++u) {
                cdot += wc2[u] * silu(ap[u]);
                ap[u] = wc2[u] * silu_grad(ap[u]);  // d c / d pre3_u
            }
            float dc = 0.0f;  // d c along direction tau0
#pragma unroll
            for (int tau = 0; tau < K; ++tau) {
                float dot = 0.0f;
#pragma unroll
                for (int u = 0; u < kTileU; ++u) dot += ap[u] * at[tau][u];
                dot = unit_lanes_sum<Hp>(dot);
                dc = tau == tau0 ? dot : dc;
            }
            const float c = unit_lanes_sum<Hp>(cdot);
            const float th = net.use_tanh ? tanhf(c) : 0.0f;
            const float phi = net.use_tanh ? cr * th : c;
            const float dphi = (net.use_tanh ? cr * (1.0f - th * th) : 1.0f) * dc;
            // The geometry again (read, not kept in registers through the products).
            const EdgeGeometry<D> g = edge_geometry<D>(sm, cur, L.x0, dx, dx0, i, js);
            const float sq = sqrtf(g.r + kCoordEps);
            const float inv = 1.0f / (sq + 1.0f);
            const float scale = valid ? phi / (sq + 1.0f) : 0.0f;
            // d[diff / (sq + 1)] = ddiff / (sq + 1) - diff (dr / (2 sq)) / (sq + 1)^2
            const float dinv = -inv * inv * g.dr / (2.0f * sq);
            // x_next_i and dx_next_i += the tile's sums (in shared memory, like M_i).
#pragma unroll
            for (int c2 = 0; c2 < D; ++c2) {
                const float ax = edge_groups_sum<Hp>(g.diff[c2] * scale);
                const float dd =
                    (g.ddiff[c2] * inv + g.diff[c2] * dinv) * phi + g.diff[c2] * inv * dphi;
                // the lanes ug of every edge group hold one direction
                const float dax = edge_groups_sum<Hp>(valid ? dd : 0.0f);
                if (lane == 0) {
                    const int o = i * D + c2;
                    sm[nxt + o] = (j0 == 0 ? sm[cur + o] : sm[nxt + o]) + ax;
                }
                if (eg == 0 && own) {
                    const int o = ug * nd + i * D + c2;
                    sm[dnxt + o] = (j0 == 0 ? sm[dcur + o] : sm[dnxt + o]) + dax;
                }
            }
            __syncwarp();  // Sp, St are rewritten by the next tile
        }
    }
}

// dirs == nullptr: the exact divergence, directions e_p for p < K = n d. Otherwise dirs holds
// K directions per sample, [B][K][n][d], and each chunk writes sum_k dirs_k . (J_v dirs_k) over
// its directions (Hutchinson's estimator with Rademacher directions, before the 1/K).
// Hp = tile_hidden(net.hidden) and D = net.d (divergence_kernel_for picks the instance), so every
// per-lane array has compile-time indices and stays in registers: at most 128 of them.
template <int Hp, int D>
__global__ void __launch_bounds__(kThreads, 2)
    egnn_divergence_kernel(EgnnNet net, int64_t B, int chunks, int K,
                           const float* __restrict__ dirs, const float* __restrict__ x,
                           const float* __restrict__ t, float* __restrict__ v,
                           float* __restrict__ partial, float* __restrict__ workspace) {
    EQFLOW_DYNAMIC_SHARED(float, sm);
    const int n = net.n, nd = n * D, H = net.hidden;
    const DivergenceLayout layout = divergence_layout(n, D, Hp);
    const PrimalLayout& L = layout.L;
    const TangentLayout& T = layout.T;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int k0 = kTileU * (lane % EdgeTile<Hp>::kUnitLanes);
    float* Sp = sm + L.scratch + warp * kTangentScratch;  // [Hp][E]
    float* St = Sp + 32 * kTileU;                         // [Hp][E][K]
    const int rows = n * kTangents;                       // tangent rows i K + tau
    const size_t plane = static_cast<size_t>(rows) * Hp;  // one [n][K][Hp] array
    float* dh = workspace + blockIdx.x * tangent_slot_floats(n, H);
    float* dP = dh + plane;
    float* dQ = dP + plane;
    float* dM = dQ + plane;

    // Work items item = b chunks + chunk = blockIdx.x, + gridDim.x, ... (b and chunk stepped
    // without a 64-bit division).
    const int b_step = static_cast<int>(gridDim.x) / chunks, chunk_step = gridDim.x % chunks;
    int64_t b = static_cast<int>(blockIdx.x) / chunks;
    int chunk = static_cast<int>(blockIdx.x) % chunks;
    for (; b < B; b += b_step, chunk += chunk_step, b += chunk >= chunks ? 1 : 0,
                  chunk -= chunk >= chunks ? chunks : 0) {
        const int64_t item = b * chunks + chunk;
        const int p0 = chunk * kTangents;  // first direction of this chunk

        load_sample(net, x + b * nd, t[b], sm, L);
        // Tangents: dx = e_p or dirs_p (p = p0 + tau; zero past K), dh = 0 (the embedding does
        // not see x). dx0 keeps them: x0 is the input too.
        for (int idx = threadIdx.x; idx < kTangents * nd; idx += blockDim.x) {
            const int tau = idx / nd, k = idx % nd, pdir = p0 + tau;
            float e = 0.0f;
            if (pdir < K) e = dirs ? dirs[(b * K + pdir) * nd + k] : (pdir == k ? 1.0f : 0.0f);
            sm[T.dx + idx] = e;
            sm[T.dx0 + idx] = e;
        }
        for (size_t idx = threadIdx.x; idx < plane; idx += blockDim.x) dh[idx] = 0.0f;
        int cur = L.x, nxt = L.xn, dcur = T.dx, dnxt = T.dxn;
        __syncthreads();

        for (int l = 0; l < net.layers; ++l) {
            const EgnnLayerPtrs& p = net.layer[l];
            // P, Q, and dP = W1a dh, dQ = W1b dh (no bias; zero in layer 0, where dh is).
            prepare_layer_tiled<Hp>(net, p, sm, L, warp, lane, [&] {
                for_tangent_row_tiles<Hp>(
                    rows, warp, lane, Sp, l > 0 ? dh : nullptr, nullptr,
                    [&](int r0, const int(&r)[kTileE], const bool(&valid)[kTileE], const float* A,
                        const float*) {
                        float acc[kTileE][kTileU];
                        init_tile(acc, nullptr, k0, H);
                        if (l > 0) rows_product<Hp>(sm + L.w2t, A, r, k0, acc);
#pragma unroll
                        for (int e = 0; e < kTileE; ++e)
                            if (valid[e]) st4(dP + (r0 + r[e]) * Hp + k0, acc[e]);
                        init_tile(acc, nullptr, k0, H);
                        if (l > 0) rows_product<Hp>(sm + L.wc1t, A, r, k0, acc);
#pragma unroll
                        for (int e = 0; e < kTileE; ++e)
                            if (valid[e]) st4(dQ + (r0 + r[e]) * Hp + k0, acc[e]);
                    });
            });
            stage_vectors<Hp>(net, p, sm + T.vec);
            __syncthreads();
            const float ba = net.attention ? p.ba[0] : 0.0f;
            layer_edges_tangent<Hp, D>(net, sm, L, T, cur, nxt, dcur, dnxt, dP, dQ, dM, ba, warp,
                                       lane, Sp, St);
            __syncthreads();
            if (l + 1 < net.layers) {
                // The node MLP and its tangent: dhid = SiLU'(zn) (Wn1a dh + Wn1b dM) into dP,
                // then dh += Wn2 dhid. zn is kept in Q.
                node_layer_tiled<Hp>(
                    net, p, sm, L, warp, lane, true,
                    [&] {
                        __syncthreads();  // zn of every node is in Q
                        for_tangent_row_tiles<Hp>(
                            rows, warp, lane, Sp, dh, dM,
                            [&](int r0, const int(&r)[kTileE], const bool(&valid)[kTileE],
                                const float* A, const float* B) {
                                float acc[kTileE][kTileU];
                                init_tile(acc, nullptr, k0, H);
                                rows_product<Hp>(sm + L.w2t, A, r, k0, acc);
                                rows_product<Hp>(sm + L.wc1t, B, r, k0, acc);
#pragma unroll
                                for (int e = 0; e < kTileE; ++e) {
                                    if (!valid[e]) continue;
                                    const int row = r0 + r[e];
                                    float zn[kTileU];
                                    ld4(sm + L.Q + (row / kTangents) * Hp + k0, zn);
#pragma unroll
                                    for (int u = 0; u < kTileU; ++u) acc[e][u] *= silu_grad(zn[u]);
                                    st4(dP + row * Hp + k0, acc[e]);
                                }
                            });
                    },
                    [&] {
                        for_tangent_row_tiles<Hp>(
                            rows, warp, lane, Sp, dP, nullptr,
                            [&](int r0, const int(&r)[kTileE], const bool(&valid)[kTileE],
                                const float* A, const float*) {
                                float acc[kTileE][kTileU];
                                init_tile(acc, nullptr, k0, H);
                                rows_product<Hp>(sm + L.w2t, A, r, k0, acc);
#pragma unroll
                                for (int e = 0; e < kTileE; ++e) {
                                    if (!valid[e]) continue;
                                    float* dst = dh + (r0 + r[e]) * Hp + k0;
                                    float h4[kTileU];
                                    ld4(dst, h4);
#pragma unroll
                                    for (int u = 0; u < kTileU; ++u) h4[u] += acc[e][u];
                                    st4(dst, h4);
                                }
                            });
                    });
            }
            int tmp = cur;
            cur = nxt;
            nxt = tmp;
            tmp = dcur;
            dcur = dnxt;
            dnxt = tmp;
            __syncthreads();
        }

        // The tangent of v = x^L - x^0 - mean_i (x^L_i - x^0_i) along e is
        //   dv = dx^L - e - (1/n) sum_i (dx^L_i - e_i).
        // Exact: dv_p/dx_p = dx^L[p] - 1 - (1/n) (sum_i dx^L[i][a0] - 1) for p = (i0, a0).
        // Directions: e . dv, summed over the chunk's directions.
        if (threadIdx.x < 32) {
            float tr = 0.0f;
            for (int tau = lane; tau < kTangents; tau += 32) {
                const int pdir = p0 + tau;
                if (pdir >= K) continue;
                const float* dxl = sm + dcur + tau * nd;
                if (dirs == nullptr) {
                    const int a0 = pdir % D;
                    float col = 0.0f;
                    for (int i = 0; i < n; ++i) col += dxl[i * D + a0];
                    tr += dxl[pdir] - 1.0f - (col - 1.0f) / static_cast<float>(n);
                } else {
                    const float* e = sm + T.dx0 + tau * nd;
                    float mean[D] = {};
                    for (int i = 0; i < n; ++i)
#pragma unroll
                        for (int a = 0; a < D; ++a) mean[a] += dxl[i * D + a] - e[i * D + a];
#pragma unroll
                    for (int a = 0; a < D; ++a) mean[a] /= static_cast<float>(n);
                    for (int i = 0; i < n; ++i)  // k = i D + a in order
#pragma unroll
                        for (int a = 0; a < D; ++a) {
                            const int k = i * D + a;
                            tr += e[k] * (dxl[k] - e[k] - mean[a]);
                        }
                }
            }
            tr = warp_sum(tr);
            if (lane == 0) partial[item] = tr;
        }
        if (chunk == 0 && v != nullptr) write_field(net, sm, L, sm + cur, v + b * nd);
        __syncthreads();  // the next item reuses shared memory and the workspace slot
    }
}

using DivergenceKernel = void (*)(EgnnNet, int64_t, int, int, const float*, const float*,
                                  const float*, float*, float*, float*);

template <int D>
inline DivergenceKernel divergence_kernel_for_dim(int Hp) {
    if (Hp == 32) return &egnn_divergence_kernel<32, D>;
    if (Hp == 64) return &egnn_divergence_kernel<64, D>;
    return &egnn_divergence_kernel<128, D>;
}

// The instance of egnn_divergence_kernel for net's shapes (1 <= d <= 3, H <= kEgnnMaxHidden).
inline DivergenceKernel divergence_kernel_for(const EgnnNet& net) {
    const int Hp = tile_hidden(net.hidden);
    if (net.d == 1) return divergence_kernel_for_dim<1>(Hp);
    if (net.d == 2) return divergence_kernel_for_dim<2>(Hp);
    return divergence_kernel_for_dim<3>(Hp);
}

// div[b] = scale * sum_c partial[b][c], in chunk order (deterministic); scale is 1 for the
// exact divergence and 1/K for K directions.
__global__ void __launch_bounds__(kThreads)
    sum_chunks_kernel(const float* __restrict__ partial, int64_t B, int chunks, float scale,
                      float* __restrict__ div) {
    const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (b >= B) return;
    float acc = 0.0f;
    for (int c = 0; c < chunks; ++c) acc += partial[b * chunks + c];
    div[b] = acc * scale;
}

inline size_t forward_smem_bytes(const EgnnNet& net) {
    return static_cast<size_t>(tiled_primal_layout(net.n, net.d, net.hidden).total) * sizeof(float);
}

inline size_t divergence_smem_bytes(const EgnnNet& net) {
    return static_cast<size_t>(divergence_layout(net.n, net.d, tile_hidden(net.hidden)).T.total) *
           sizeof(float);
}

// Chunks of kTangents directions: K = n d for the exact divergence.
inline int divergence_chunks(int K) {
    return (K + kTangents - 1) / kTangents;
}
inline int divergence_chunks(const EgnnNet& net) {
    return divergence_chunks(net.n * net.d);
}

}  // namespace
}  // namespace eqflow::cuda::egnn_detail
