// kernels/egnn_backward_kernels.cuh: device code of the fused EGNN reverse mode.
// The launcher is in kernels/egnn_backward.cu; emu/ runs this same code on the CPU.
//
//
// Gradient contract: dL_dparams += dL/dparams (accumulates), dL_dx = dL/dx (overwrites).
//
// Work decomposition: persistent blocks of 256 threads (8 warps); block s owns workspace slot s
// and walks samples b = s, s + gridDim.x, ... For one sample it
//   1. runs the forward pass, storing the per-layer node states h^l, x^l, M^l in its slot
//      (O(L n H) floats; no edge tensor is ever stored),
//   2. walks the layers backwards. The node MLP's backward goes node by node with the whole
//      block. The edges go in ROUNDS: in round (g, j) warp w takes the edge (i = 8g + w, j), so
//      the eight edges of a round share their source j. Each warp recomputes its edge's
//      activations and back-propagates through them in registers, leaving its per-edge vectors
//      (s1, m, dL/dz1, dL/dz2, dL/dzc, ...) in shared memory; then the whole block adds the
//      eight contributions to the parameter gradients and to the source node j, always in warp
//      order. Target-side sums (over j) stay in the owning warp's registers.
//   3. Parameter gradients go to the slot's private gradient buffer, each entry owned by one
//      thread and updated in a fixed order; W2 and Wc1 gradients are first summed in shared
//      memory per layer. A final kernel adds the slots to dL_dparams in slot order.
// Every sum has a fixed order, so two runs give bit-identical gradients.
//
// Shared memory (floats): the primal layout of egnn.cu + W2, Wc1 row-major (2 H^2) + their
// gradient accumulators (2 H^2) + gh, gQ [n][H] + gx, gx_src, gx0 [n][d] + per-warp edge
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/device_compat.cuh"
#include "kernels/egnn.cuh"
#include "kernels/egnn_common.cuh"

namespace eqflow::cuda::egnn_detail {
namespace {  // one copy per including file: internal linkage

constexpr int kVecs = 8;      // per-warp H-vectors: s1, me, gz1, gz2, gzc, gwc2, gwa, spare
constexpr int kScalars = 16;  // per-warp scalars: active, gba, r, a, gdiff[3], gdiff0[3]

struct BackLayout {
    int w2, wc1, gw2, gwc1, gh, gQ, gx, gxsrc, gx0, vec, scal, total;
};

__host__ __device__ inline BackLayout back_layout(int base, int n, int d, int H) {
    BackLayout s{};
    int off = base;
    auto take = [&](int count) {
        const int at = off;
        off += (count + 3) / 4 * 4;
        return at;
    };
    s.w2 = take(H * H);
    s.wc1 = take(H * H);
    s.gw2 = take(H * H);
    s.gwc1 = take(H * H);
    s.gh = take(n * H);
    s.gQ = take(n * H);
    s.gx = take(n * d);
    s.gxsrc = take(n * d);
    s.gx0 = take(n * d);
    s.vec = take(kWarps * kVecs * H);
    s.scal = take(kWarps * kScalars);
    s.total = off;
    return s;
}

// Per-slot global workspace (floats): hs [L][n][H], xs [L+1][n][d], Ms [L][n][H], gM [n][H],
// gP [n][H], then the slot's gradient buffer [param_count].
struct SlotLayout {
    size_t hs, xs, Ms, gM, gP, grad, total;
};

__host__ __device__ inline SlotLayout slot_layout(int n, int d, int H, int L, int64_t param_count) {
    SlotLayout s{};
    size_t off = 0;
    auto take = [&](size_t count) {
        const size_t at = off;
        off += (count + 63) / 64 * 64;
        return at;
    };
    s.hs = take(static_cast<size_t>(L) * n * H);
    s.xs = take(static_cast<size_t>(L + 1) * n * d);
    s.Ms = take(static_cast<size_t>(L) * n * H);
    s.gM = take(static_cast<size_t>(n) * H);
    s.gP = take(static_cast<size_t>(n) * H);
    s.grad = take(static_cast<size_t>(param_count));
    s.total = off;
    return s;
}

// Offset of a parameter tensor (a pointer into the parameter buffer) in the gradient buffer.
__device__ __forceinline__ float* grad_of(float* grad, const float* base, const float* param) {
    return grad + (param - base);
}

__global__ void __launch_bounds__(kThreads)
    egnn_backward_kernel(EgnnNet net, const float* __restrict__ pbase, int64_t param_count,
                         int64_t B, const float* __restrict__ x, const float* __restrict__ t,
                         const float* __restrict__ dL_dv, float* __restrict__ dL_dx,
                         float* __restrict__ workspace) {
    EQFLOW_DYNAMIC_SHARED(float, sm);
    const int n = net.n, d = net.d, H = net.hidden, Lyr = net.layers, nd = n * d;
    const PrimalLayout L = primal_layout(n, d, H);
    const BackLayout K = back_layout(L.total, n, d, H);
    const SlotLayout S = slot_layout(n, d, H, Lyr, param_count);
    float* slot = workspace + blockIdx.x * S.total;
    float* grad = slot + S.grad;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float* s1 = sm + L.scratch + warp * 2 * H;
    float* mm = s1 + H;
    float* vec = sm + K.vec + warp * kVecs * H;  // this warp's edge vectors
    float* scal = sm + K.scal + warp * kScalars;
    enum { V_S1 = 0, V_ME, V_GZ1, V_GZ2, V_GZC, V_GWC2, V_GWA };
    enum { S_ACTIVE = 0, S_GBA, S_R, S_A, S_GDIFF, S_GDIFF0 = S_GDIFF + kEgnnMaxDim };

    for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
        // ---- 1. forward, keeping h^l, x^l, M^l ----
        load_sample(net, x + b * nd, t[b], sm, L);
        int cur = L.x, nxt = L.xn;
        __syncthreads();
        for (int l = 0; l < Lyr; ++l) {
            const EgnnLayerPtrs& p = net.layer[l];
            for (int k = threadIdx.x; k < n * H; k += blockDim.x)
                slot[S.hs + static_cast<size_t>(l) * n * H + k] = sm[L.h + k];
            for (int k = threadIdx.x; k < nd; k += blockDim.x)
                slot[S.xs + static_cast<size_t>(l) * nd + k] = sm[cur + k];
            prepare_layer(net, p, sm, L);
            __syncthreads();
            const LaneVectors lv = lane_vectors(net, p, lane);
            layer_edges_primal(net, sm, L, lv, cur, nxt, warp, lane, s1, mm,
                               slot + S.Ms + static_cast<size_t>(l) * n * H);
            __syncthreads();
            if (l + 1 < Lyr)
                for (int i = warp; i < n; i += kWarps)
                    node_primal(net, p, sm, L, i, lane, s1, nullptr);
            const int tmp = cur;
            cur = nxt;
            nxt = tmp;
            __syncthreads();
        }

        // ---- 2. seed: v = x^L - x^0 - mean  =>  dL/dx^L = g - mean(g), dL/dx^0 gets -(g -
        // mean(g)) ----
        const float* g = dL_dv + b * nd;
        for (int idx = threadIdx.x; idx < nd; idx += blockDim.x) {
            const int c = idx % d;
            float mean = 0.0f;
            for (int i = 0; i < n; ++i) mean += g[i * d + c];
            mean /= static_cast<float>(n);
            sm[K.gx + idx] = g[idx] - mean;
            sm[K.gx0 + idx] = -(g[idx] - mean);
        }
        for (int k = threadIdx.x; k < n * H; k += blockDim.x) sm[K.gh + k] = 0.0f;
        __syncthreads();

        // ---- 3. layers backwards ----
        for (int l = Lyr - 1; l >= 0; --l) {
            const EgnnLayerPtrs& p = net.layer[l];
            // Primal state of the layer's input, and the weights.
            for (int k = threadIdx.x; k < n * H; k += blockDim.x) {
                sm[L.h + k] = slot[S.hs + static_cast<size_t>(l) * n * H + k];
                sm[L.M + k] = slot[S.Ms + static_cast<size_t>(l) * n * H + k];
                sm[K.gQ + k] = 0.0f;
            }
            for (int k = threadIdx.x; k < nd; k += blockDim.x) {
                sm[L.x + k] = slot[S.xs + static_cast<size_t>(l) * nd + k];
                sm[K.gxsrc + k] = 0.0f;
            }
            for (int k = threadIdx.x; k < H * H; k += blockDim.x) {
                sm[K.w2 + k] = p.w2[k];
                sm[K.wc1 + k] = p.wc1[k];
                sm[K.gw2 + k] = 0.0f;
                sm[K.gwc1 + k] = 0.0f;
            }
            __syncthreads();
            prepare_layer(net, p, sm, L);  // W2^T, Wc1^T, P, Q from h^l
            __syncthreads();

            // 3a. node MLP (not after the last layer, which has none): node by node, whole block.
            //     h' = h + Wn2 hid + bn2, hid = SiLU(zn), zn = Wn1 [h, M] + bn1.
            float* gM = slot + S.gM;
            if (l + 1 < Lyr) {
                float* zn =
                    sm + K.vec;  // block-wide scratch (the warps' edge vectors are idle now)
                float* hid = zn + H;
                float* gzn = hid + H;
                float* newgh = gzn + H;
                float* gwn1 = grad_of(grad, pbase, p.wn1);
                float* gbn1 = grad_of(grad, pbase, p.bn1);
                float* gwn2 = grad_of(grad, pbase, p.wn2);
                float* gbn2 = grad_of(grad, pbase, p.bn2);
                for (int i = 0; i < n; ++i) {
                    const float* hi = sm + L.h + i * H;
                    const float* Mi = sm + L.M + i * H;
                    float* ghi = sm + K.gh + i * H;  // dL/dh^{l+1}_i on entry
                    for (int k = threadIdx.x; k < H; k += blockDim.x) {
                        const float* row = p.wn1 + k * 2 * H;
                        float acc = p.bn1[k];
                        for (int m = 0; m < H; ++m) acc += row[m] * hi[m] + row[H + m] * Mi[m];
                        zn[k] = acc;
                        hid[k] = silu(acc);
                    }
                    __syncthreads();
                    for (int k = threadIdx.x; k < H; k += blockDim.x) {
                        float acc = 0.0f;
                        for (int o = 0; o < H; ++o) acc += p.wn2[o * H + k] * ghi[o];
                        gzn[k] = silu_grad(zn[k]) * acc;
                    }
                    __syncthreads();
                    for (int e = threadIdx.x; e < H * H; e += blockDim.x)
                        gwn2[e] += ghi[e / H] * hid[e % H];
                    for (int e = threadIdx.x; e < H * 2 * H; e += blockDim.x) {
                        const int o = e / (2 * H), m = e % (2 * H);
                        gwn1[e] += gzn[o] * (m < H ? hi[m] : Mi[m - H]);
                    }
                    for (int k = threadIdx.x; k < H; k += blockDim.x) {
                        gbn2[k] += ghi[k];
                        gbn1[k] += gzn[k];
                        float acc_h = ghi[k], acc_m = 0.0f;
                        for (int o = 0; o < H; ++o) {
                            acc_h += p.wn1[o * 2 * H + k] * gzn[o];
                            acc_m += p.wn1[o * 2 * H + H + k] * gzn[o];
                        }
                        newgh[k] = acc_h;
                        gM[i * H + k] = acc_m;
                    }
                    __syncthreads();
                    for (int k = threadIdx.x; k < H; k += blockDim.x) ghi[k] = newgh[k];
                    __syncthreads();
                }
            } else {
                for (int k = threadIdx.x; k < n * H; k += blockDim.x)
                    gM[k] = 0.0f;  // M^{L-1} feeds nothing
                __syncthreads();
            }

            // 3b. edges, in rounds (target group, source j).
            const LaneVectors lv = lane_vectors(net, p, lane);
            float* gP = slot + S.gP;
            float* gb1 = grad_of(grad, pbase, p.b1);
            float* gw1 = grad_of(grad, pbase, p.w1);
            float* gb2 = grad_of(grad, pbase, p.b2);
            float* gbc1 = grad_of(grad, pbase, p.bc1);
            float* gwc2 = grad_of(grad, pbase, p.wc2);
            float* gwa = net.attention ? grad_of(grad, pbase, p.wa) : nullptr;
            float* gba = net.attention ? grad_of(grad, pbase, p.ba) : nullptr;
            const int W1 = 2 * H + 2;
            for (int g0 = 0; g0 < n; g0 += kWarps) {
                const int i = g0 + warp;
                float gPacc[kLanesQ] = {};
                float gxacc[kEgnnMaxDim] = {}, gx0acc[kEgnnMaxDim] = {};
                for (int j = 0; j < n; ++j) {
                    const bool active = i < n && i != j;
                    if (active) {
                        float diff[kEgnnMaxDim] = {}, diff0[kEgnnMaxDim] = {};
                        float r = 0.0f, a = 0.0f;
                        for (int c = 0; c < d; ++c) {
                            diff[c] = sm[L.x + i * d + c] - sm[L.x + j * d + c];
                            r += diff[c] * diff[c];
                            diff0[c] = sm[L.x0 + i * d + c] - sm[L.x0 + j * d + c];
                            a += diff0[c] * diff0[c];
                        }
                        EdgePrimal e;
                        edge_primal(net, sm, L, lv, i, j, r, a, lane, s1, mm, e);
                        // Coordinate update u phi, u = diff / (sq + 1).
                        const float sq = sqrtf(r + kCoordEps);
                        const float inv = 1.0f / (sq + 1.0f);
                        float gphi = 0.0f, ginv = 0.0f;
                        float gdiff[kEgnnMaxDim] = {};
                        for (int c = 0; c < d; ++c) {
                            const float gxi = sm[K.gx + i * d + c];
                            gphi += gxi * diff[c] * inv;
                            gdiff[c] = gxi * e.phi * inv;
                            ginv += gxi * e.phi * diff[c];
                        }
                        float gr = ginv * (-inv * inv / (2.0f * sq));
                        const float th = net.use_tanh ? tanhf(e.c) : 0.0f;
                        const float gc =
                            net.use_tanh ? gphi * net.coords_range * (1.0f - th * th) : gphi;
                        // Coordinate MLP: c = wc2 . SiLU(zc), zc = Wc1 me + bc1.
#pragma unroll
                        for (int q = 0; q < kLanesQ; ++q) {
                            const int k = lane + 32 * q;
                            if (k < H) {
                                vec[V_S1 * H + k] = s1[k];
                                vec[V_ME * H + k] = mm[k];
                                vec[V_GWC2 * H + k] = gc * silu(e.pre3[q]);
                                vec[V_GZC * H + k] = gc * lv.wc2[q] * silu_grad(e.pre3[q]);
                            }
                        }
                        __syncwarp();
                        // dL/dme = dL/dM_i + Wc1^T gzc
                        float gme[kLanesQ];
                        float gdot = 0.0f;  // sum_k gme_k mraw_k
#pragma unroll
                        for (int q = 0; q < kLanesQ; ++q) {
                            const int k = lane + 32 * q;
                            gme[q] = 0.0f;
                            if (k < H) {
                                float acc = gM[i * H + k];
                                for (int o = 0; o < H; ++o)
                                    acc += sm[K.wc1 + o * H + k] * vec[V_GZC * H + o];
                                gme[q] = acc;
                                gdot += acc * e.mraw[q];
                            }
                        }
                        // Attention: me = mraw gate, gate = sigmoid(wa . mraw + ba).
                        const float gz_att =
                            net.attention ? warp_sum(gdot) * e.gate * (1.0f - e.gate) : 0.0f;
#pragma unroll
                        for (int q = 0; q < kLanesQ; ++q) {
                            const int k = lane + 32 * q;
                            if (k < H) {
                                const float gmraw = gme[q] * e.gate + gz_att * lv.wa[q];
                                vec[V_GZ2 * H + k] = gmraw * silu_grad(e.pre2[q]);
                                vec[V_GWA * H + k] = gz_att * e.mraw[q];
                            }
                        }
                        __syncwarp();
                        // dL/dz1 = SiLU'(z1) W2^T gz2; pre1 feeds P_i, Q_j, r and a.
                        float ga = 0.0f, grp = 0.0f;
#pragma unroll
                        for (int q = 0; q < kLanesQ; ++q) {
                            const int k = lane + 32 * q;
                            if (k < H) {
                                float acc = 0.0f;
                                for (int o = 0; o < H; ++o)
                                    acc += sm[K.w2 + o * H + k] * vec[V_GZ2 * H + o];
                                const float gz1 = silu_grad(e.pre1[q]) * acc;
                                vec[V_GZ1 * H + k] = gz1;
                                gPacc[q] += gz1;
                                grp += gz1 * lv.w1r[q];
                                ga += gz1 * lv.w1a[q];
                            }
                        }
                        gr += warp_sum(grp);
                        ga = warp_sum(ga);
                        for (int c = 0; c < d; ++c) {
                            gdiff[c] += 2.0f * diff[c] * gr;
                            gxacc[c] += gdiff[c];
                            gx0acc[c] += 2.0f * diff0[c] * ga;
                        }
                        if (lane == 0) {
                            scal[S_ACTIVE] = 1.0f;
                            scal[S_GBA] = gz_att;
                            scal[S_R] = r;
                            scal[S_A] = a;
                            for (int c = 0; c < d; ++c) {
                                scal[S_GDIFF + c] = gdiff[c];
                                scal[S_GDIFF0 + c] = 2.0f * diff0[c] * ga;
                            }
                        }
                    } else if (lane == 0) {
                        scal[S_ACTIVE] = 0.0f;
                    }
                    __syncthreads();
                    // The block adds the round's edges, warp by warp in order.
                    for (int e = threadIdx.x; e < H * H; e += blockDim.x) {
                        const int o = e / H, m = e % H;
                        float a2 = 0.0f, ac = 0.0f;
                        for (int w = 0; w < kWarps; ++w) {
                            const float* vw = sm + K.vec + w * kVecs * H;
                            if (sm[K.scal + w * kScalars + S_ACTIVE] == 0.0f) continue;
                            a2 += vw[V_GZ2 * H + o] * vw[V_S1 * H + m];
                            ac += vw[V_GZC * H + o] * vw[V_ME * H + m];
                        }
                        sm[K.gw2 + e] += a2;
                        sm[K.gwc1 + e] += ac;
                    }
                    for (int k = threadIdx.x; k < H; k += blockDim.x) {
                        float sb2 = 0, sbc1 = 0, swc2 = 0, swa = 0, sb1 = 0, sw1r = 0, sw1a = 0,
                              sq = 0;
                        for (int w = 0; w < kWarps; ++w) {
                            const float* vw = sm + K.vec + w * kVecs * H;
                            const float* sw = sm + K.scal + w * kScalars;
                            if (sw[S_ACTIVE] == 0.0f) continue;
                            sb2 += vw[V_GZ2 * H + k];
                            sbc1 += vw[V_GZC * H + k];
                            swc2 += vw[V_GWC2 * H + k];
                            swa += vw[V_GWA * H + k];
                            sb1 += vw[V_GZ1 * H + k];
                            sw1r += vw[V_GZ1 * H + k] * sw[S_R];
                            sw1a += vw[V_GZ1 * H + k] * sw[S_A];
                            sq += vw[V_GZ1 * H + k];
                        }
                        gb2[k] += sb2;
                        gbc1[k] += sbc1;
                        gwc2[k] += swc2;
                        if (gwa) gwa[k] += swa;
                        gb1[k] += sb1;
                        gw1[k * W1 + 2 * H] += sw1r;
                        gw1[k * W1 + 2 * H + 1] += sw1a;
                        sm[K.gQ + j * H + k] += sq;  // source j's share of W1b h_j
                    }
                    if (threadIdx.x < d) {
                        const int c = threadIdx.x;
                        float sx = 0.0f, sx0 = 0.0f;
                        for (int w = 0; w < kWarps; ++w) {
                            const float* sw = sm + K.scal + w * kScalars;
                            if (sw[S_ACTIVE] == 0.0f) continue;
                            sx += sw[S_GDIFF + c];
                            sx0 += sw[S_GDIFF0 + c];
                        }
                        sm[K.gxsrc + j * d + c] -= sx;
                        sm[K.gx0 + j * d + c] -= sx0;
                    }
                    if (gba && threadIdx.x == 32) {
                        float s = 0.0f;
                        for (int w = 0; w < kWarps; ++w) {
                            const float* sw = sm + K.scal + w * kScalars;
                            if (sw[S_ACTIVE] != 0.0f) s += sw[S_GBA];
                        }
                        gba[0] += s;
                    }
                    __syncthreads();
                }
                // The warp's target sums.
                if (i < n) {
#pragma unroll
                    for (int q = 0; q < kLanesQ; ++q) {
                        const int k = lane + 32 * q;
                        if (k < H) gP[i * H + k] = gPacc[q];
                    }
                    if (lane < d) {
                        sm[K.gxsrc + i * d + lane] += gxacc[lane];
                        sm[K.gx0 + i * d + lane] += gx0acc[lane];
                    }
                }
                __syncthreads();
            }

            // 3c. per-node parts of W1 (P = W1a h + b1, Q = W1b h) and dL/dh^l, dL/dx^l.
            for (int e = threadIdx.x; e < H * 2 * H; e += blockDim.x) {
                const int o = e / (2 * H), m = e % (2 * H);
                float acc = 0.0f;
                for (int i = 0; i < n; ++i)
                    acc +=
                        (m < H ? gP[i * H + o] : sm[K.gQ + i * H + o]) * sm[L.h + i * H + (m % H)];
                gw1[o * W1 + m] += acc;
            }
            for (int e = threadIdx.x; e < H * H; e += blockDim.x) {
                grad_of(grad, pbase, p.w2)[e] += sm[K.gw2 + e];
                grad_of(grad, pbase, p.wc1)[e] += sm[K.gwc1 + e];
            }
            __syncthreads();  // gh is read below by other threads than those that wrote it
            for (int idx = threadIdx.x; idx < n * H; idx += blockDim.x) {
                const int i = idx / H, m = idx % H;
                float acc = sm[K.gh + idx];
                for (int o = 0; o < H; ++o)
                    acc += p.w1[o * W1 + m] * gP[i * H + o] +
                           p.w1[o * W1 + H + m] * sm[K.gQ + i * H + o];
                sm[L.P + idx] = acc;  // P is free now: stage the new dL/dh^l there
            }
            for (int k = threadIdx.x; k < nd; k += blockDim.x) sm[K.gx + k] += sm[K.gxsrc + k];
            __syncthreads();
            for (int k = threadIdx.x; k < n * H; k += blockDim.x) sm[K.gh + k] = sm[L.P + k];
            __syncthreads();
        }

        // ---- 4. embedding and the input gradient ----
        {
            const int F = net.in_features;
            float* gemb_w = grad_of(grad, pbase, net.emb_w);
            float* gemb_b = grad_of(grad, pbase, net.emb_b);
            const float tb = t[b];
            for (int e = threadIdx.x; e < H * F; e += blockDim.x) {
                const int k = e / F, f = e % F;
                float acc = 0.0f;
                for (int i = 0; i < n; ++i) {
                    const float feat =
                        f == F - 1 ? tb : (net.types != nullptr && net.types[i] == f ? 1.0f : 0.0f);
                    acc += sm[K.gh + i * H + k] * feat;
                }
                gemb_w[e] += acc;
            }
            for (int k = threadIdx.x; k < H; k += blockDim.x) {
                float acc = 0.0f;
                for (int i = 0; i < n; ++i) acc += sm[K.gh + i * H + k];
                gemb_b[k] += acc;
            }
            if (dL_dx != nullptr)
                for (int k = threadIdx.x; k < nd; k += blockDim.x)
                    dL_dx[b * nd + k] = sm[K.gx + k] + sm[K.gx0 + k];
        }
        __syncthreads();  // the next sample reuses shared memory
    }
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
    const PrimalLayout L = primal_layout(net.n, net.d, net.hidden);
    return static_cast<size_t>(back_layout(L.total, net.n, net.d, net.hidden).total) *
           sizeof(float);
}

}  // namespace
}  // namespace eqflow::cuda::egnn_detail
