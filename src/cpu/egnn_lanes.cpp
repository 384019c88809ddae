// The fast CPU backend's reverse mode of the EGNN's exact divergence: the reference's
// forward-over-reverse pass (src/cpu/egnn_reverse.h, the code the double reference runs with its
// Dual) instantiated with LaneDual, a dual number whose value and tangent are SIMD vectors of
// float, one direction per lane.
//
// div v = sum_q e_q^T J e_q, and the reverse pass of L_q = g e_q^T v run on duals whose x carries
// the tangent e_q returns g grad(e_q^T J e_q) in its tangent parts (egnn_cpu.cpp). The reference
// runs one dual pass per direction q; here lane l of a pass carries direction q0 + l: the input's
// tangent is e_{q0+l} in lane l, the upstream gradient's value g e_{q0+l} in lane l. The forward
// values are the same in every lane (computed W times, in one vector instruction each); the
// reverse pass's values and every tangent differ by lane. So W directions cost one pass of
// vector arithmetic instead of W passes of scalar double dual arithmetic: DW4's 8 directions are
// one pass with AVX2, LJ13's 39 are five.
//
// Precision: float throughout the pass, with the fast field's float parameters; the gradient's
// tangents accumulate per lane in float over about kFlushEdges edge terms (DW4: a chunk's 16 rows;
// LJ13: 2 rows; LJ55: one), then are summed over the lanes into the caller's double gradient.
// Tested against the double reference to float tolerances (tests/test_likelihood.cpp).
#include "cpu/egnn_lanes.h"

#include <algorithm>
#include <vector>

#include "cpu/egnn_reverse.h"
#include "cpu/simd_f32.h"

namespace eqflow::cpu {

namespace {

using simd::kLanes;
using simd::vf;

constexpr int64_t kFlushEdges = 1024;  // as in egnn_field_fast.cpp

inline vf splat(double s) {
    return simd::splat(static_cast<float>(s));
}

// value + tangent, each a vector of kLanes floats (one direction per lane).
struct LaneDual {
    vf v{};
    vf d{};

    LaneDual() = default;
    // Implicit from double or float: a constant in every lane (zero tangent), as Dual.
    LaneDual(double value) : v(splat(value)) {}       // NOLINT(google-explicit-constructor)
    LaneDual(float value) : v(simd::splat(value)) {}  // NOLINT(google-explicit-constructor)
    LaneDual(int value) : v(simd::splat(static_cast<float>(value))) {}  // NOLINT: `S r = 0`
    LaneDual(vf value, vf tangent) : v(value), d(tangent) {}

    LaneDual& operator+=(const LaneDual& b) {
        v += b.v;
        d += b.d;
        return *this;
    }
    LaneDual& operator-=(const LaneDual& b) {
        v -= b.v;
        d -= b.d;
        return *this;
    }
    LaneDual& operator/=(double b) {
        const vf s = splat(b);
        v /= s;
        d /= s;
        return *this;
    }
    LaneDual& operator*=(const LaneDual& b) {
        d = d * b.v + v * b.d;
        v *= b.v;
        return *this;
    }
};

inline LaneDual operator-(const LaneDual& a) {
    return LaneDual(-a.v, -a.d);
}
inline LaneDual operator+(const LaneDual& a, const LaneDual& b) {
    return LaneDual(a.v + b.v, a.d + b.d);
}
inline LaneDual operator-(const LaneDual& a, const LaneDual& b) {
    return LaneDual(a.v - b.v, a.d - b.d);
}
inline LaneDual operator*(const LaneDual& a, const LaneDual& b) {
    return LaneDual(a.v * b.v, a.d * b.v + a.v * b.d);
}
inline LaneDual operator*(double a, const LaneDual& b) {
    const vf s = splat(a);
    return LaneDual(s * b.v, s * b.d);
}
inline LaneDual operator*(const LaneDual& a, double b) {
    const vf s = splat(b);
    return LaneDual(a.v * s, a.d * s);
}
// A weight (float, the fast field's parameters) times a dual: one broadcast, no conversion.
inline LaneDual operator*(float a, const LaneDual& b) {
    const vf s = simd::splat(a);
    return LaneDual(s * b.v, s * b.d);
}
inline LaneDual operator*(const LaneDual& a, float b) {
    const vf s = simd::splat(b);
    return LaneDual(a.v * s, a.d * s);
}
inline LaneDual operator/(const LaneDual& a, const LaneDual& b) {
    const vf q = a.v / b.v;
    return LaneDual(q, (a.d - q * b.d) / b.v);
}
inline LaneDual operator/(const LaneDual& a, double b) {
    const vf s = splat(b);
    return LaneDual(a.v / s, a.d / s);
}
inline LaneDual operator/(double a, const LaneDual& b) {
    const vf q = splat(a) / b.v;
    return LaneDual(q, -q * b.d / b.v);
}

// sigmoid as one function (found before the template in egnn_reverse.h by argument-dependent
// lookup): the template's 1 / (1 + exp(-z)) through the quotient rule overflows in float where
// exp(-z) does (z below about -88: inf * tangent), this one does not (s' = s (1 - s)).
inline LaneDual sigmoid(const LaneDual& a) {
    const vf s = simd::vsigmoid(a.v);
    return LaneDual(s, s * (1.0f - s) * a.d);
}
inline LaneDual exp(const LaneDual& a) {
    const vf e = simd::vexp(a.v);
    return LaneDual(e, e * a.d);
}
inline LaneDual tanh(const LaneDual& a) {
    const vf t = simd::vtanh(a.v);
    return LaneDual(t, (1.0f - t * t) * a.d);
}
// silu and dsilu as the templates in egnn_reverse.h write them (the same expressions, the same
// bits), as overloads that are always inlined: the templates were out-of-line calls per element,
// each returning its dual through memory.
[[gnu::always_inline]] inline LaneDual silu(const LaneDual& z) {
    return z * sigmoid(z);
}
[[gnu::always_inline]] inline LaneDual dsilu(const LaneDual& z) {
    const LaneDual s = sigmoid(z);
    return s * (1.0 + z * (1.0 - s));
}
inline LaneDual sqrt(const LaneDual& a) {  // once per edge: a plain loop is enough
    vf s{};
    for (int l = 0; l < kLanes; ++l) s[l] = std::sqrt(a.v[l]);
    return LaneDual(s, a.d / (2.0f * s));
}

// The parameter gradient keeps only the tangents (the caller reads nothing else), as the
// reference's Dual outer products do.
struct LaneGrad {
    vf d{};
    LaneGrad& operator+=(const LaneDual& s) {
        d += s.d;
        return *this;
    }
};

// The reverse pass's H x H matrix-vector products, as the templates in egnn_reverse.h compute
// them (each output's sum in the same order, so the same bits) but with a tile of outputs held in
// registers across the whole sum: the templates' loop order (unit stride over outputs) loads and
// stores every output dual once per weight, two loads and two stores per two FMAs here.
constexpr int kGemvTile = simd::kVectorRegisters >= 32 ? 8 : 4;

// out[r] += sum_i W[i stride + r] in[i], i ascending, r < T: the outputs' duals in registers.
template <int T>
inline void dual_tile(const float* W, int64_t stride, int count, const LaneDual* in,
                      LaneDual* out) {
    vf av[T], ad[T];
#pragma GCC unroll 8
    for (int r = 0; r < T; ++r) {
        av[r] = out[r].v;
        ad[r] = out[r].d;
    }
    for (int i = 0; i < count; ++i) {
        const vf iv = in[i].v, id = in[i].d;
        const float* w = W + i * stride;
#pragma GCC unroll 8
        for (int r = 0; r < T; ++r) {
            const vf s = simd::splat(w[r]);
            av[r] += iv * s;
            ad[r] += id * s;
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < T; ++r) out[r] = LaneDual(av[r], ad[r]);
}
// out[r] += sum_i W[i stride + r] in[i] for r < n, in tiles.
inline void dual_products(const float* W, int64_t stride, int count, const LaneDual* in,
                          LaneDual* out, int n) {
    int r = 0;
    for (; r + kGemvTile <= n; r += kGemvTile)
        dual_tile<kGemvTile>(W + r, stride, count, in, out + r);
    for (; r < n; ++r) dual_tile<1>(W + r, stride, count, in, out + r);
}

// y[o] = b[o] + sum_k Wt[k][o] x[k], k ascending (gemv_transposed).
inline void gemv_transposed(const float* Wt, int rows, int cols, const LaneDual* x, const float* b,
                            LaneDual* y) {
    for (int o = 0; o < rows; ++o) y[o] = b ? LaneDual(b[o]) : LaneDual(0.0);
    dual_products(Wt, rows, cols, x, y, rows);
}

// x[k] += sum_o W[o*ld + k] y[o], o ascending (gemv_t_add).
inline void gemv_t_add(const float* W, int64_t ld, int rows, int cols, const LaneDual* y,
                       LaneDual* x) {
    dual_products(W, ld, rows, y, x, cols);
}

// The outer products dW += y x^T (tangents only: (y x).d = y.v x.d + y.d x.v) are most of the
// reverse pass: two H x H per edge (Wc1, W2), five H^2 per node. Applied one at a time, each reads
// and writes its block of the lanes' gradient (H^2 vectors of kLanes floats: 64 KB at H 32 with
// AVX-512) for 2 FMAs per vector, an L2-bound stream. So they are deferred: each target block
// (by its dW) queues up to kGerBatch (y, x) pairs, then applies them as one register-tiled
// product over the queued pairs, the accumulators in registers across the pairs, so the block
// is read and written once per kGerBatch products. The queue is drained before the gradient is
// read (flush). The float sums change order (per block of pairs, then into G); deterministic.
constexpr int kGerBatch = 16;

struct GerSlot {
    LaneGrad* dW = nullptr;
    int64_t ld = 0;
    int rows = 0, cols = 0, count = 0;
    std::vector<LaneDual> y, x;  // [kGerBatch][rows], [kGerBatch][cols]
};

// Tile of TO rows x TK columns of dW, accumulated over the slot's pairs in registers.
template <int TO, int TK>
inline void ger_tile(const GerSlot& s, int o0, int k0) {
    vf acc[TO][TK];
#pragma GCC unroll 8
    for (int o = 0; o < TO; ++o)
#pragma GCC unroll 8
        for (int k = 0; k < TK; ++k) acc[o][k] = vf{};
    for (int e = 0; e < s.count; ++e) {
        const LaneDual* y = s.y.data() + static_cast<int64_t>(e) * s.rows + o0;
        const LaneDual* x = s.x.data() + static_cast<int64_t>(e) * s.cols + k0;
        vf xv[TK], xd[TK];
#pragma GCC unroll 8
        for (int k = 0; k < TK; ++k) {
            xv[k] = x[k].v;
            xd[k] = x[k].d;
        }
#pragma GCC unroll 8
        for (int o = 0; o < TO; ++o) {
            const vf yv = y[o].v, yd = y[o].d;
#pragma GCC unroll 8
            for (int k = 0; k < TK; ++k) acc[o][k] += yv * xd[k] + yd * xv[k];
        }
    }
#pragma GCC unroll 8
    for (int o = 0; o < TO; ++o)
#pragma GCC unroll 8
        for (int k = 0; k < TK; ++k) s.dW[(o0 + o) * s.ld + k0 + k].d += acc[o][k];
}

// 4 x 4 tiles with 32 vector registers (16 accumulators, 8 x vectors, 2 y), 2 x 2 with 16.
constexpr int kGerTile = simd::kVectorRegisters >= 32 ? 4 : 2;

void ger_apply(GerSlot& s) {
    constexpr int T = kGerTile;
    for (int o0 = 0; o0 < s.rows; o0 += T)
        for (int k0 = 0; k0 < s.cols; k0 += T) {
            if (o0 + T <= s.rows && k0 + T <= s.cols) {
                ger_tile<T, T>(s, o0, k0);
                continue;
            }
            for (int o = o0; o < std::min(o0 + T, s.rows); ++o)  // edges of the block
                for (int k = k0; k < std::min(k0 + T, s.cols); ++k) {
                    vf acc = vf{};
                    for (int e = 0; e < s.count; ++e) {
                        const LaneDual& yo = s.y[static_cast<size_t>(e * s.rows + o)];
                        const LaneDual& xk = s.x[static_cast<size_t>(e * s.cols + k)];
                        acc += yo.v * xk.d + yo.d * xk.v;
                    }
                    s.dW[o * s.ld + k].d += acc;
                }
        }
    s.count = 0;
}

struct GerQueue {
    std::vector<GerSlot> slots;
    GerSlot& slot(LaneGrad* dW, int64_t ld, int rows, int cols) {
        for (GerSlot& s : slots)
            if (s.dW == dW) return s;
        GerSlot* s = nullptr;
        for (GerSlot& free : slots)
            if (free.dW == nullptr) {
                s = &free;
                break;
            }
        if (s == nullptr) s = &slots.emplace_back();
        s->dW = dW;
        s->ld = ld;
        s->rows = rows;
        s->cols = cols;
        s->count = 0;
        // Grow only: a thread's slots keep their buffers from call to call.
        if (s->y.size() < static_cast<size_t>(kGerBatch) * rows)
            s->y.resize(static_cast<size_t>(kGerBatch) * rows);
        if (s->x.size() < static_cast<size_t>(kGerBatch) * cols)
            s->x.resize(static_cast<size_t>(kGerBatch) * cols);
        return *s;
    }
    void drain() {
        for (GerSlot& s : slots)
            if (s.count > 0) ger_apply(s);
    }
    // Forget the targets and anything queued, keep the buffers. Run at the start and the end
    // of every call: a call left by an exception (bad_alloc) must not leave pairs queued
    // against a gradient that is gone.
    void release() {
        for (GerSlot& s : slots) {
            s.dW = nullptr;
            s.count = 0;
        }
    }
};

// A thread's buffers, kept across calls (the workers of the thread pool persist): the lanes'
// gradient (P vectors: 1.4 MB at DW4 H 32 with AVX-512) and the outer products' queue, which
// allocated afresh per call cost page faults and zeroing in every call (~10% of a DW4 step).
// They only grow, and live as long as the thread: at LJ55 (H 64, L 7, AVX-512) about 11 MB of
// gradient and 12 MB of queue per pool thread.
struct LanesWorkspace {
    std::vector<LaneGrad> G;
    GerQueue queue;
};
thread_local LanesWorkspace t_workspace;
// The queue of the calling thread's egnn_divergence_backward_lanes while it runs.
thread_local GerQueue* t_ger_queue = nullptr;

inline void ger_add(LaneGrad* dW, int64_t ld, int rows, int cols, const LaneDual* y,
                    const LaneDual* x) {
    GerSlot& s = t_ger_queue->slot(dW, ld, rows, cols);
    std::copy(y, y + rows, s.y.begin() + static_cast<int64_t>(s.count) * rows);
    std::copy(x, x + cols, s.x.begin() + static_cast<int64_t>(s.count) * cols);
    if (++s.count == kGerBatch) ger_apply(s);
}
inline void ger_add(LaneGrad* dW, int64_t ld, int rows, int cols, const LaneDual* y,
                    const double* x) {
    for (int o = 0; o < rows; ++o) {
        LaneGrad* w = dW + o * ld;
        const vf yd = y[o].d;
        for (int k = 0; k < cols; ++k) w[k].d += yd * splat(x[k]);
    }
}

}  // namespace

void egnn_divergence_backward_lanes(const EgnnConfig& config, const EgnnOffsets& off,
                                    const float* params, int64_t rows, const float* x,
                                    const float* t, const float* g, double* grad, float* dL_dx) {
    const int nd = config.n_particles * config.dim;
    const int64_t P = egnn_parameter_count(config);
    std::vector<LaneDual> xs(static_cast<size_t>(nd)), dv(static_cast<size_t>(nd)),
        gx(static_cast<size_t>(nd));
    std::vector<LaneGrad>& G = t_workspace.G;
    G.assign(static_cast<size_t>(P), LaneGrad{});
    // The lanes' float gradient goes into the double one every kFlushEdges edge terms (a row's
    // n(n-1) L if more), as the fast field's own float accumulators do.
    const int64_t edges = static_cast<int64_t>(config.n_particles) * (config.n_particles - 1) *
                          std::max(config.layers, 1);
    const int64_t flush_rows = std::max<int64_t>(1, kFlushEdges / edges);
    GerQueue& queue = t_workspace.queue;
    queue.release();
    t_ger_queue = &queue;
    struct Done {  // on every way out, exceptions included
        GerQueue& q;
        ~Done() {
            q.release();
            t_ger_queue = nullptr;
        }
    } done{queue};
    auto flush = [&] {
        queue.drain();
        for (int64_t i = 0; i < P; ++i) {
            LaneGrad& gi = G[static_cast<size_t>(i)];
            double sum = 0.0;
            for (int l = 0; l < kLanes; ++l) sum += gi.d[l];
            grad[i] += sum;
            gi = LaneGrad{};
        }
    };
    for (int64_t b = 0; b < rows; ++b) {
        const float* xb = x + b * nd;
        float* gxb = dL_dx ? dL_dx + b * nd : nullptr;
        if (gxb) std::fill(gxb, gxb + nd, 0.0f);
        for (int q0 = 0; q0 < nd; q0 += kLanes) {
            // Lane l: direction q0 + l (lanes past nd carry nothing).
            for (int k = 0; k < nd; ++k) {
                vf tangent{}, seed{};
                const int l = k - q0;
                if (l >= 0 && l < kLanes) {
                    tangent[l] = 1.0f;
                    seed[l] = g[b];
                }
                xs[static_cast<size_t>(k)] = LaneDual(splat(xb[k]), tangent);
                dv[static_cast<size_t>(k)] = LaneDual(seed, vf{});
            }
            backward_one<LaneDual, LaneGrad, float>(config, off, params, xs.data(), t[b], dv.data(),
                                                    G.data(), gxb ? gx.data() : nullptr);
            if (gxb)
                for (int k = 0; k < nd; ++k) gxb[k] += simd::hsum(gx[static_cast<size_t>(k)].d);
        }
        if ((b + 1) % flush_rows == 0 || b + 1 == rows) flush();
    }
}

}  // namespace eqflow::cpu
