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
// sum_{p in chunk} dv_p/dx_p. A second kernel sums the chunks of each sample in order.
// Tangent state: dx, dx_next [kTangents][n][d] in shared memory; dh, dP, dQ, dM
// [kTangents][n][H] in the caller's global workspace (one slot per resident block; blocks
// loop over work items).
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
// Exact divergence by forward-mode tangents
// ---------------------------------------------------------------------------------------------

// Global workspace of one block: dh, dP, dQ, dM, each [kTangents][n][H].
__host__ __device__ inline size_t tangent_slot_floats(int n, int H) {
    return static_cast<size_t>(4) * kTangents * n * H;
}

// dirs == nullptr: the exact divergence, directions e_p for p < K = n d. Otherwise dirs holds
// K directions per sample, [B][K][n][d], and each chunk writes sum_k dirs_k . (J_v dirs_k) over
// its directions (Hutchinson's estimator with Rademacher directions, before the 1/K).
// D = net.d, a compile-time constant so that the per-direction arrays stay in registers
// (divergence_kernel_for picks the instance).
template <int D>
__global__ void __launch_bounds__(kThreads)
    egnn_divergence_kernel(EgnnNet net, int64_t B, int chunks, int K,
                           const float* __restrict__ dirs, const float* __restrict__ x,
                           const float* __restrict__ t, float* __restrict__ v,
                           float* __restrict__ partial, float* __restrict__ workspace) {
    EQFLOW_DYNAMIC_SHARED(float, sm);
    const int n = net.n, d = D, H = net.hidden, nd = n * d;
    const PrimalLayout L = primal_layout(n, d, H);
    const TangentLayout T = tangent_layout(L.total, n, d, H);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float* s1 = sm + L.scratch + warp * 2 * H;
    float* mm = s1 + H;
    float* ds1 = sm + T.scratch + warp * 2 * kTangents * H;  // [kTangents][H]
    float* dmm = ds1 + kTangents * H;                        // [kTangents][H]
    const size_t plane = static_cast<size_t>(n) * H;         // one tangent's [n][H]
    float* dh = workspace + blockIdx.x * tangent_slot_floats(n, H);
    float* dP = dh + kTangents * plane;
    float* dQ = dP + kTangents * plane;
    float* dM = dQ + kTangents * plane;

    for (int64_t item = blockIdx.x; item < B * chunks; item += gridDim.x) {
        const int64_t b = item / chunks;
        const int chunk = static_cast<int>(item % chunks);
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
        for (size_t idx = threadIdx.x; idx < kTangents * plane; idx += blockDim.x) dh[idx] = 0.0f;
        int cur = L.x, nxt = L.xn, dcur = T.dx, dnxt = T.dxn;
        __syncthreads();

        for (int l = 0; l < net.layers; ++l) {
            const EgnnLayerPtrs& p = net.layer[l];
            prepare_layer(net, p, sm, L);
            // dP = W1a dh, dQ = W1b dh (no bias).
            for (size_t idx = threadIdx.x; idx < kTangents * plane; idx += blockDim.x) {
                const int k = static_cast<int>(idx % H);
                const float* dhi = dh + (idx - k);
                const float* row = p.w1 + k * (2 * H + 2);
                float accP = 0.0f, accQ = 0.0f;
                for (int m = 0; m < H; ++m) {
                    accP += row[m] * dhi[m];
                    accQ += row[H + m] * dhi[m];
                }
                dP[idx] = accP;
                dQ[idx] = accQ;
            }
            __syncthreads();
            const LaneVectors lv = lane_vectors(net, p, lane);
            for (int i = warp; i < n; i += kWarps) {
                float accM[kLanesQ] = {};
                float accX[D] = {};
                float daccM[kTangents][kLanesQ] = {};
                float daccX[kTangents][D] = {};
                for (int j = 0; j < n; ++j) {
                    if (j == i) continue;
                    float diff[D] = {}, diff0[D] = {};
                    float r = 0.0f, a = 0.0f;
                    for (int c = 0; c < d; ++c) {
                        diff[c] = sm[cur + i * d + c] - sm[cur + j * d + c];
                        r += diff[c] * diff[c];
                        diff0[c] = sm[L.x0 + i * d + c] - sm[L.x0 + j * d + c];
                        a += diff0[c] * diff0[c];
                    }
                    EdgePrimal e;
                    edge_primal(net, sm, L, lv, i, j, r, a, lane, s1, mm, e);
                    const float sq = sqrtf(r + kCoordEps);
                    const float inv = 1.0f / (sq + 1.0f);
                    for (int c = 0; c < d; ++c) accX[c] += diff[c] * e.phi * inv;
#pragma unroll
                    for (int q = 0; q < kLanesQ; ++q) accM[q] += e.m[q];

                    // Tangents of r and a, then of pre1 -> ds1 into scratch.
                    float ddiff[kTangents][D];
                    float dr[kTangents];
#pragma unroll
                    for (int tau = 0; tau < kTangents; ++tau) {
                        float drt = 0.0f, dat = 0.0f;
                        for (int c = 0; c < d; ++c) {
                            ddiff[tau][c] =
                                sm[dcur + tau * nd + i * d + c] - sm[dcur + tau * nd + j * d + c];
                            drt += 2.0f * diff[c] * ddiff[tau][c];
                            const float dd0 =
                                sm[T.dx0 + tau * nd + i * d + c] - sm[T.dx0 + tau * nd + j * d + c];
                            dat += 2.0f * diff0[c] * dd0;
                        }
                        dr[tau] = drt;
#pragma unroll
                        for (int q = 0; q < kLanesQ; ++q) {
                            const int k = lane + 32 * q;
                            if (k < H) {
                                const float dpre1 = dP[tau * plane + i * H + k] +
                                                    dQ[tau * plane + j * H + k] + lv.w1r[q] * drt +
                                                    lv.w1a[q] * dat;
                                ds1[tau * H + k] = silu_grad(e.pre1[q]) * dpre1;
                            }
                        }
                    }
                    __syncwarp();
                    // dm = d(mraw * gate): W2 tangent, SiLU', attention.
                    float dmv[kTangents][kLanesQ];
                    float dz[kTangents];
#pragma unroll
                    for (int tau = 0; tau < kTangents; ++tau) {
                        float zpart = 0.0f;
#pragma unroll
                        for (int q = 0; q < kLanesQ; ++q) {
                            const int k = lane + 32 * q;
                            dmv[tau][q] = 0.0f;
                            if (k < H) {
                                float acc = 0.0f;
                                for (int mi = 0; mi < H; ++mi)
                                    acc += sm[L.w2t + mi * H + k] * ds1[tau * H + mi];
                                dmv[tau][q] = silu_grad(e.pre2[q]) * acc;  // d mraw
                                zpart += lv.wa[q] * dmv[tau][q];
                            }
                        }
                        dz[tau] = net.attention ? warp_sum(zpart) : 0.0f;
                    }
                    const float dgate_dz = e.gate * (1.0f - e.gate);
#pragma unroll
                    for (int tau = 0; tau < kTangents; ++tau) {
#pragma unroll
                        for (int q = 0; q < kLanesQ; ++q) {
                            const int k = lane + 32 * q;
                            const float dm = dmv[tau][q] * e.gate + e.mraw[q] * dgate_dz * dz[tau];
                            daccM[tau][q] += dm;
                            if (k < H) dmm[tau * H + k] = dm;
                        }
                    }
                    __syncwarp();
                    // dphi from the coordinate MLP, then the coordinate update's tangent.
                    const float dphi_dc =
                        net.use_tanh ? net.coords_range * (1.0f - tanhf(e.c) * tanhf(e.c)) : 1.0f;
#pragma unroll
                    for (int tau = 0; tau < kTangents; ++tau) {
                        float cpart = 0.0f;
#pragma unroll
                        for (int q = 0; q < kLanesQ; ++q) {
                            const int k = lane + 32 * q;
                            if (k < H) {
                                float acc = 0.0f;
                                for (int mi = 0; mi < H; ++mi)
                                    acc += sm[L.wc1t + mi * H + k] * dmm[tau * H + mi];
                                cpart += lv.wc2[q] * silu_grad(e.pre3[q]) * acc;
                            }
                        }
                        const float dphi = dphi_dc * warp_sum(cpart);
                        // d[diff / (sq + 1)] = ddiff / (sq + 1) - diff (dr / (2 sq)) / (sq + 1)^2
                        const float dinv = -inv * inv * dr[tau] / (2.0f * sq);
                        for (int c = 0; c < d; ++c)
                            daccX[tau][c] += (ddiff[tau][c] * inv + diff[c] * dinv) * e.phi +
                                             diff[c] * inv * dphi;
                    }
                    __syncwarp();  // scratch is rewritten by the next edge
                }
#pragma unroll
                for (int q = 0; q < kLanesQ; ++q) {
                    const int k = lane + 32 * q;
                    if (k < H) {
                        sm[L.M + i * H + k] = accM[q];
#pragma unroll
                        for (int tau = 0; tau < kTangents; ++tau)
                            dM[tau * plane + i * H + k] = daccM[tau][q];
                    }
                }
#pragma unroll
                for (int c = 0; c < D; ++c) {
                    if (lane != c)
                        continue;  // lane c writes coordinate c: registers, not a
                                   // runtime index into the arrays
                    sm[nxt + i * d + c] = sm[cur + i * d + c] + accX[c];
#pragma unroll
                    for (int tau = 0; tau < kTangents; ++tau)
                        sm[dnxt + tau * nd + i * d + c] =
                            sm[dcur + tau * nd + i * d + c] + daccX[tau][c];
                }
            }
            __syncthreads();
            if (l + 1 < net.layers) {
                for (int i = warp; i < n; i += kWarps) {
                    // Tangent of the node MLP first (it needs the old h_i), then the primal update.
                    float hid_pre[kLanesQ] = {};
                    const float* hi = sm + L.h + i * H;
                    const float* Mi = sm + L.M + i * H;
#pragma unroll
                    for (int q = 0; q < kLanesQ; ++q) {
                        const int k = lane + 32 * q;
                        if (k < H) {
                            const float* row = p.wn1 + k * 2 * H;
                            float acc = p.bn1[k];
                            for (int m = 0; m < H; ++m) acc += row[m] * hi[m] + row[H + m] * Mi[m];
                            hid_pre[q] = acc;
                        }
                    }
                    for (int tau = 0; tau < kTangents; ++tau) {
                        float* dhi = dh + tau * plane + i * H;
                        const float* dMi = dM + tau * plane + i * H;
#pragma unroll
                        for (int q = 0; q < kLanesQ; ++q) {
                            const int k = lane + 32 * q;
                            if (k < H) {
                                const float* row = p.wn1 + k * 2 * H;
                                float acc = 0.0f;
                                for (int m = 0; m < H; ++m)
                                    acc += row[m] * dhi[m] + row[H + m] * dMi[m];
                                ds1[k] = silu_grad(hid_pre[q]) * acc;  // d hid, in scratch
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
                                for (int m = 0; m < H; ++m) out[q] += row[m] * ds1[m];
                            }
                        }
                        __syncwarp();  // all lanes have read dh_i and ds1
#pragma unroll
                        for (int q = 0; q < kLanesQ; ++q) {
                            const int k = lane + 32 * q;
                            if (k < H) dhi[k] += out[q];
                        }
                        __syncwarp();
                    }
                    node_primal(net, p, sm, L, i, lane, s1, nullptr);
                }
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
                    const int a0 = pdir % d;
                    float col = 0.0f;
                    for (int i = 0; i < n; ++i) col += dxl[i * d + a0];
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

// The instance of egnn_divergence_kernel for net.d (1 <= d <= 3).
inline DivergenceKernel divergence_kernel_for(const EgnnNet& net) {
    if (net.d == 1) return &egnn_divergence_kernel<1>;
    if (net.d == 2) return &egnn_divergence_kernel<2>;
    return &egnn_divergence_kernel<3>;
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
    const PrimalLayout L = primal_layout(net.n, net.d, net.hidden);
    return static_cast<size_t>(tangent_layout(L.total, net.n, net.d, net.hidden).total) *
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
