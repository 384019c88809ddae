// src/cpu/egnn_reverse.h: the CPU reference EGNN's primal and reverse passes, templated on the
// scalar type S of the activations and on the parameters' type R (double; float for the lanes)
// (src/cpu/egnn_cpu.cpp has the equations). Instantiated with
// double (the backward pass), Dual (forward over reverse: the reference's divergence_backward)
// and LaneDual (src/cpu/egnn_lanes.cpp: the fast backend's divergence_backward, the directions
// across SIMD lanes). The reverse pass is templated on the parameter gradient's type G too, so
// that a second-order pass can keep only the gradient's tangents.
//
// Everything here has internal linkage (an unnamed namespace in a header, on purpose): the two
// files that include it are compiled with different flags (the fast one with -march=native and
// FMA contraction), and a shared inline instantiation such as gemv<double, double, double> must
// not be merged across them by the linker, or the reference's bits would depend on which copy
// won. (cpu/dual.h's inline operators have external linkage: the fast file must not use Dual.)
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/egnn_offsets.h"
#include "cpu/dual.h"
#include "eqflow/egnn.h"

namespace eqflow::cpu {
// NOLINTNEXTLINE(google-build-namespaces, cert-dcl59-cpp): see the header comment.
namespace {

// docs/design.md section 4: d_ij / (sqrt(r_ij + 1e-8) + 1).
constexpr double kNormEps = 1e-8;

// The activation math is templated on the scalar type S of the activations (double, or Dual
// for forward-over-reverse second derivatives, or LaneDual); the parameters are double (R) for
// the reference. With S = double every expression is the one the untemplated code had, in the
// same order: results are bit-identical. exp / tanh / sqrt are found by overload: std:: for
// double, cpu:: for Dual, by argument-dependent lookup for LaneDual.
using std::exp;
using std::sqrt;
using std::tanh;

template <class S>
S sigmoid(const S& z) {
    return 1.0 / (1.0 + exp(-z));
}
template <class S>
S silu(const S& z) {
    return z * sigmoid(z);
}
template <class S>
S dsilu(const S& z) {
    const S s = sigmoid(z);
    return s * (1.0 + z * (1.0 - s));
}

// The parameters' type R (double; float for the fast field's lanes) is deduced from the weights
// only: a bias argument may be nullptr.
template <class R>
struct SameType {
    using type = R;
};
template <class R>
using Same = typename SameType<R>::type;

// y[o] = b[o] + sum_k W[o*ld + k] x[k]  (o < rows, k < cols; b nullable)
template <class R, class X, class Y>
void gemv(const R* W, int64_t ld, int rows, int cols, const X* x, const Same<R>* b, Y* y) {
    for (int o = 0; o < rows; ++o) {
        const R* w = W + o * ld;
        Y acc = b ? Y(b[o]) : Y(0.0);
        for (int k = 0; k < cols; ++k) acc += w[k] * x[k];
        y[o] = acc;
    }
}

// x[k] += sum_o W[o*ld + k] y[o]
template <class R, class S>
void gemv_t_add(const R* W, int64_t ld, int rows, int cols, const S* y, S* x) {
    for (int o = 0; o < rows; ++o) {
        const R* w = W + o * ld;
        const S yo = y[o];
        for (int k = 0; k < cols; ++k) x[k] += w[k] * yo;
    }
}

// dW[o*ld + k] += y[o] x[k]
template <class G, class S, class X>
void ger_add(G* dW, int64_t ld, int rows, int cols, const S* y, const X* x) {
    for (int o = 0; o < rows; ++o) {
        G* w = dW + o * ld;
        const S yo = y[o];
        for (int k = 0; k < cols; ++k) w[k] += yo * x[k];
    }
}
// The dual parameter gradient is only ever read for its tangent (egnn_divergence_backward_one),
// so the outer products, the bulk of the reverse pass, skip the value part: (y x).d only.
inline void ger_add(Dual* dW, int64_t ld, int rows, int cols, const Dual* y, const Dual* x) {
    for (int o = 0; o < rows; ++o) {
        Dual* w = dW + o * ld;
        const Dual yo = y[o];
        for (int k = 0; k < cols; ++k) w[k].d += yo.v * x[k].d + yo.d * x[k].v;
    }
}

// y[o] = b[o] + sum_k xt[k][o] x[k] with the weight stored transposed, xt [cols][rows]: the
// inner loop runs over o with unit stride, which compilers vectorise without reassociating
// sums (unlike the dot products of gemv). Used for the per-edge H x H products.
template <class R, class S>
void gemv_transposed(const R* Wt, int rows, int cols, const S* x, const Same<R>* b, S* y) {
    for (int o = 0; o < rows; ++o) y[o] = b ? S(b[o]) : S(0.0);
    for (int k = 0; k < cols; ++k) {
        const S xk = x[k];
        const R* w = Wt + static_cast<int64_t>(k) * rows;
        for (int o = 0; o < rows; ++o) y[o] += xk * w[o];
    }
}

// W [rows][cols] -> Wt [cols][rows]
template <class R>
std::vector<R> transpose(const R* W, int rows, int cols) {
    std::vector<R> Wt(static_cast<size_t>(rows) * cols);
    for (int o = 0; o < rows; ++o)
        for (int k = 0; k < cols; ++k)
            Wt[static_cast<size_t>(k) * rows + o] = W[static_cast<size_t>(o) * cols + k];
    return Wt;
}

struct Dims {
    int n, d, H, F, L;
    bool attention, tanh;
    double cr;
};

inline Dims dims_of(const EgnnConfig& c) {
    return Dims{c.n_particles, c.dim,       c.hidden, c.in_features(),
                c.layers,      c.attention, c.tanh,   c.effective_coords_range()};
}

// f [n][F]: one-hot type (when typed), then t.
inline std::vector<double> node_features(const EgnnConfig& c, double t) {
    const int n = c.n_particles, F = c.in_features(), T = c.num_types();
    std::vector<double> f(static_cast<size_t>(n) * F, 0.0);
    for (int i = 0; i < n; ++i) {
        if (T > 0) f[i * F + c.atom_types[i]] = 1.0;
        f[i * F + T] = t;
    }
    return f;
}

// h0 [n][H] = emb_w f + emb_b
template <class R>
void embed(const Dims& D, const R* p, const EgnnOffsets& off, const double* f, double* h0) {
    for (int i = 0; i < D.n; ++i)
        gemv(p + off.emb_w, D.F, D.H, D.F, f + i * D.F, p + off.emb_b, h0 + i * D.H);
}

// The primal quantities of one edge (i, j).
template <class S>
struct Edge {
    std::vector<S> z1, s1, z2, m, me, zc, sc;  // [H]
    std::vector<S> dx, dx0;                    // [d]: x_i - x_j, x0_i - x0_j
    S r = 0, a = 0, g = 1, c = 0, th = 0, phi = 0, nrm = 1;

    explicit Edge(const Dims& D)
        : z1(D.H), s1(D.H), z2(D.H), m(D.H), me(D.H), zc(D.H), sc(D.H), dx(D.d), dx0(D.d) {}
};

// The two per-edge H x H weights of a layer, transposed (see gemv_transposed).
template <class R>
struct EdgeWeights {
    std::vector<R> W2t, Wc1t;
    EdgeWeights(const Dims& D, const R* p, const EgnnLayerOffsets& lo)
        : W2t(transpose(p + lo.edge_w2, D.H, D.H)), Wc1t(transpose(p + lo.coord_w0, D.H, D.H)) {}
};

template <class S, class R>
void edge_forward(const Dims& D, const R* p, const EgnnLayerOffsets& lo, const EdgeWeights<R>& ew,
                  const S* Pi, const S* Qj, const S* xi, const S* xj, const S* x0i, const S* x0j,
                  Edge<S>& e) {
    const int H = D.H;
    const int64_t ld1 = 2 * H + 2;
    e.r = 0.0;
    e.a = 0.0;
    for (int k = 0; k < D.d; ++k) {
        e.dx[k] = xi[k] - xj[k];
        e.dx0[k] = x0i[k] - x0j[k];
        e.r += e.dx[k] * e.dx[k];
        e.a += e.dx0[k] * e.dx0[k];
    }
    const R* W1 = p + lo.edge_w0;
    for (int o = 0; o < H; ++o) {
        e.z1[o] = Pi[o] + Qj[o] + W1[o * ld1 + 2 * H] * e.r + W1[o * ld1 + 2 * H + 1] * e.a;
        e.s1[o] = silu(e.z1[o]);
    }
    gemv_transposed(ew.W2t.data(), H, H, e.s1.data(), p + lo.edge_b2, e.z2.data());
    for (int o = 0; o < H; ++o) e.m[o] = silu(e.z2[o]);
    if (D.attention) {
        S za = p[lo.att_b0];
        for (int o = 0; o < H; ++o) za += p[lo.att_w0 + o] * e.m[o];
        e.g = sigmoid(za);
        for (int o = 0; o < H; ++o) e.me[o] = e.g * e.m[o];
    } else {
        e.g = 1.0;
        for (int o = 0; o < H; ++o) e.me[o] = e.m[o];
    }
    gemv_transposed(ew.Wc1t.data(), H, H, e.me.data(), p + lo.coord_b0, e.zc.data());
    e.c = 0.0;
    for (int o = 0; o < H; ++o) {
        e.sc[o] = silu(e.zc[o]);
        e.c += p[lo.coord_w2 + o] * e.sc[o];
    }
    if (D.tanh) {
        e.th = tanh(e.c);
        e.phi = D.cr * e.th;
    } else {
        e.phi = e.c;
    }
    e.nrm = sqrt(e.r + kNormEps) + 1.0;
}

// P [n][H] = W1a h + b1, Q [n][H] = W1b h.
template <class S, class R>
void node_projections(const Dims& D, const R* p, const EgnnLayerOffsets& lo, const S* h, S* P,
                      S* Q) {
    const int H = D.H;
    const int64_t ld1 = 2 * H + 2;
    for (int i = 0; i < D.n; ++i) {
        gemv(p + lo.edge_w0, ld1, H, H, h + i * H, p + lo.edge_b0, P + i * H);
        gemv(p + lo.edge_w0 + H, ld1, H, H, h + i * H, nullptr, Q + i * H);
    }
}

// One layer forward. h, x [n][*] -> h_out, x_out; M [n][H] = sum_j me_ij.
template <class S, class R>
void layer_forward(const Dims& D, const R* p, const EgnnLayerOffsets& lo, const S* h, const S* x,
                   const S* x0, S* h_out, S* x_out, S* M) {
    const int n = D.n, d = D.d, H = D.H;
    std::vector<S> P(static_cast<size_t>(n) * H), Q(static_cast<size_t>(n) * H);
    node_projections(D, p, lo, h, P.data(), Q.data());
    std::copy(x, x + static_cast<size_t>(n) * d, x_out);
    std::fill(M, M + static_cast<size_t>(n) * H, S(0.0));
    const EdgeWeights<R> ew(D, p, lo);
    Edge<S> e(D);
    for (int i = 0; i < n; ++i) {
        for (int j = 0; j < n; ++j) {
            if (j == i) continue;
            edge_forward(D, p, lo, ew, &P[i * H], &Q[j * H], x + i * d, x + j * d, x0 + i * d,
                         x0 + j * d, e);
            const S s = e.phi / e.nrm;
            for (int k = 0; k < d; ++k) x_out[i * d + k] += e.dx[k] * s;
            for (int o = 0; o < H; ++o) M[i * H + o] += e.me[o];
        }
    }
    std::vector<S> u(2 * H), zn(H), sn(H), y(H);
    for (int i = 0; i < n; ++i) {
        for (int k = 0; k < H; ++k) {
            u[k] = h[i * H + k];
            u[H + k] = M[i * H + k];
        }
        gemv(p + lo.node_w0, 2 * H, H, 2 * H, u.data(), p + lo.node_b0, zn.data());
        for (int k = 0; k < H; ++k) sn[k] = silu(zn[k]);
        gemv(p + lo.node_w2, H, H, H, sn.data(), p + lo.node_b2, y.data());
        for (int k = 0; k < H; ++k) h_out[i * H + k] = h[i * H + k] + y[k];
    }
}

// Per-layer states for the backward pass.
template <class S>
struct Tape {
    std::vector<S> h;  // [L+1][n][H]
    std::vector<S> x;  // [L+1][n][d]
    std::vector<S> M;  // [L][n][H]
};

// v [n][d] (nullable) = mean-free (x^L - x^0); fills the tape.
template <class S, class R>
void forward_with_tape(const Dims& D, const EgnnConfig& c, const EgnnOffsets& off, const R* p,
                       const S* x, double t, Tape<S>& tape, S* v) {
    const int n = D.n, d = D.d, H = D.H, L = D.L;
    const size_t nH = static_cast<size_t>(n) * H, nd = static_cast<size_t>(n) * d;
    tape.h.assign((L + 1) * nH, S(0.0));
    tape.x.assign((L + 1) * nd, S(0.0));
    tape.M.assign(L * nH, S(0.0));
    // h0 depends on t only: computed in double (as always), then widened to S.
    const std::vector<double> f = node_features(c, t);
    std::vector<double> h0(nH);
    embed(D, p, off, f.data(), h0.data());
    std::copy(h0.begin(), h0.end(), tape.h.begin());
    std::copy(x, x + nd, tape.x.begin());
    for (int l = 0; l < L; ++l) {
        layer_forward(D, p, off.layers[l], &tape.h[l * nH], &tape.x[l * nd], x,
                      &tape.h[(l + 1) * nH], &tape.x[(l + 1) * nd], &tape.M[l * nH]);
    }
    if (v) {
        const S* xL = &tape.x[L * nd];
        for (int k = 0; k < d; ++k) {
            S mean = 0.0;
            for (int i = 0; i < n; ++i) mean += xL[i * d + k] - x[i * d + k];
            mean /= n;
            for (int i = 0; i < n; ++i) v[i * d + k] = xL[i * d + k] - x[i * d + k] - mean;
        }
    }
}

// One layer backward. Inputs: the layer's h, x, M (from the tape), gh_out, gx_out (dL/d outputs).
// Outputs: gh_in, gx_in (overwritten); gx0 [n][d] += dL/dx0 through a_ij; dp += parameter grads.
template <class S, class G, class R>
void layer_backward(const Dims& D, const R* p, const EgnnLayerOffsets& lo, const S* h, const S* x,
                    const S* x0, const S* M, const S* gh_out, const S* gx_out, S* gh_in, S* gx_in,
                    S* gx0, G* dp) {
    const int n = D.n, d = D.d, H = D.H;
    const int64_t ld1 = 2 * H + 2;
    std::copy(gh_out, gh_out + static_cast<size_t>(n) * H, gh_in);
    std::copy(gx_out, gx_out + static_cast<size_t>(n) * d, gx_in);

    // Node update: h_out = h + Wn2 SiLU(Wn1 [h, M] + bn1) + bn2.
    std::vector<S> gM(static_cast<size_t>(n) * H, S(0.0));
    {
        std::vector<S> u(2 * H), zn(H), sn(H), g_sn(H), g_u(2 * H);
        for (int i = 0; i < n; ++i) {
            const S* gho = gh_out + i * H;
            for (int k = 0; k < H; ++k) {
                u[k] = h[i * H + k];
                u[H + k] = M[i * H + k];
            }
            gemv(p + lo.node_w0, 2 * H, H, 2 * H, u.data(), p + lo.node_b0, zn.data());
            for (int k = 0; k < H; ++k) sn[k] = silu(zn[k]);
            for (int k = 0; k < H; ++k) dp[lo.node_b2 + k] += gho[k];
            ger_add(dp + lo.node_w2, H, H, H, gho, sn.data());
            std::fill(g_sn.begin(), g_sn.end(), S(0.0));
            gemv_t_add(p + lo.node_w2, H, H, H, gho, g_sn.data());
            for (int k = 0; k < H; ++k) g_sn[k] *= dsilu(zn[k]);  // now dL/dzn
            for (int k = 0; k < H; ++k) dp[lo.node_b0 + k] += g_sn[k];
            ger_add(dp + lo.node_w0, 2 * H, H, 2 * H, g_sn.data(), u.data());
            std::fill(g_u.begin(), g_u.end(), S(0.0));
            gemv_t_add(p + lo.node_w0, 2 * H, H, 2 * H, g_sn.data(), g_u.data());
            for (int k = 0; k < H; ++k) {
                gh_in[i * H + k] += g_u[k];
                gM[i * H + k] = g_u[H + k];
            }
        }
    }

    // Edges.
    std::vector<S> P(static_cast<size_t>(n) * H), Q(static_cast<size_t>(n) * H);
    node_projections(D, p, lo, h, P.data(), Q.data());
    std::vector<S> gP(static_cast<size_t>(n) * H, S(0.0)), gQ(static_cast<size_t>(n) * H, S(0.0));
    std::vector<S> g_zc(H), g_me(H), g_m(H), g_z2(H), g_s1(H), g_z1(H), g_dx(d);
    const R* W1 = p + lo.edge_w0;
    G* dW1 = dp + lo.edge_w0;
    const EdgeWeights<R> ew(D, p, lo);
    Edge<S> e(D);
    for (int i = 0; i < n; ++i) {
        const S* gxi = gx_out + i * d;
        for (int j = 0; j < n; ++j) {
            if (j == i) continue;
            edge_forward(D, p, lo, ew, &P[i * H], &Q[j * H], x + i * d, x + j * d, x0 + i * d,
                         x0 + j * d, e);
            // x_i += dx phi / nrm
            S dot = 0.0;
            for (int k = 0; k < d; ++k) dot += gxi[k] * e.dx[k];
            const S g_phi = dot / e.nrm;
            for (int k = 0; k < d; ++k) g_dx[k] = gxi[k] * e.phi / e.nrm;
            const S g_nrm = -dot * e.phi / (e.nrm * e.nrm);
            S g_r = g_nrm * 0.5 / (e.nrm - 1.0);  // nrm - 1 = sqrt(r + eps)
            const S g_c = D.tanh ? S(g_phi * D.cr * (1.0 - e.th * e.th)) : g_phi;
            // c = wc2 . SiLU(zc), zc = Wc1 me + bc1
            for (int k = 0; k < H; ++k) {
                dp[lo.coord_w2 + k] += g_c * e.sc[k];
                g_zc[k] = g_c * p[lo.coord_w2 + k] * dsilu(e.zc[k]);
                dp[lo.coord_b0 + k] += g_zc[k];
            }
            ger_add(dp + lo.coord_w0, H, H, H, g_zc.data(), e.me.data());
            for (int k = 0; k < H; ++k) g_me[k] = gM[i * H + k];  // M_i += me
            gemv_t_add(p + lo.coord_w0, H, H, H, g_zc.data(), g_me.data());
            // me = g m, g = sigmoid(wa . m + ba)
            if (D.attention) {
                S g_g = 0.0;
                for (int k = 0; k < H; ++k) g_g += g_me[k] * e.m[k];
                const S g_za = g_g * e.g * (1.0 - e.g);
                dp[lo.att_b0] += g_za;
                for (int k = 0; k < H; ++k) {
                    dp[lo.att_w0 + k] += g_za * e.m[k];
                    g_m[k] = g_me[k] * e.g + g_za * p[lo.att_w0 + k];
                }
            } else {
                for (int k = 0; k < H; ++k) g_m[k] = g_me[k];
            }
            // m = SiLU(z2), z2 = W2 s1 + b2
            for (int k = 0; k < H; ++k) {
                g_z2[k] = g_m[k] * dsilu(e.z2[k]);
                dp[lo.edge_b2 + k] += g_z2[k];
            }
            ger_add(dp + lo.edge_w2, H, H, H, g_z2.data(), e.s1.data());
            std::fill(g_s1.begin(), g_s1.end(), S(0.0));
            gemv_t_add(p + lo.edge_w2, H, H, H, g_z2.data(), g_s1.data());
            // s1 = SiLU(z1), z1 = P_i + Q_j + w1r r + w1a a
            S g_a = 0.0;
            for (int o = 0; o < H; ++o) {
                g_z1[o] = g_s1[o] * dsilu(e.z1[o]);
                gP[i * H + o] += g_z1[o];
                gQ[j * H + o] += g_z1[o];
                dW1[o * ld1 + 2 * H] += g_z1[o] * e.r;
                dW1[o * ld1 + 2 * H + 1] += g_z1[o] * e.a;
                g_r += g_z1[o] * W1[o * ld1 + 2 * H];
                g_a += g_z1[o] * W1[o * ld1 + 2 * H + 1];
            }
            for (int k = 0; k < d; ++k) {
                const S g = g_dx[k] + 2.0 * e.dx[k] * g_r;
                gx_in[i * d + k] += g;
                gx_in[j * d + k] -= g;
                const S g0 = 2.0 * e.dx0[k] * g_a;
                gx0[i * d + k] += g0;
                gx0[j * d + k] -= g0;
            }
        }
    }
    // P_i = W1a h_i + b1, Q_i = W1b h_i
    for (int i = 0; i < n; ++i) {
        for (int o = 0; o < H; ++o) dp[lo.edge_b0 + o] += gP[i * H + o];
        ger_add(dW1, ld1, H, H, &gP[i * H], h + i * H);
        ger_add(dW1 + H, ld1, H, H, &gQ[i * H], h + i * H);
        gemv_t_add(W1, ld1, H, H, &gP[i * H], gh_in + i * H);
        gemv_t_add(W1 + H, ld1, H, H, &gQ[i * H], gh_in + i * H);
    }
}

// Reverse mode of one sample in the scalar type S (double: the backward pass; Dual: forward
// over reverse). dL_dparams [P] += dL/dparams, in G (S, or a type that keeps the part of S that
// the caller reads); dL_dx [n][d] = dL/dx (nullable).
template <class S, class G = S, class R = double>
void backward_one(const EgnnConfig& config, const EgnnOffsets& off, const R* params, const S* x,
                  double t, const S* dL_dv, G* dL_dparams, S* dL_dx) {
    const Dims D = dims_of(config);
    const int n = D.n, d = D.d, H = D.H, L = D.L;
    const size_t nH = static_cast<size_t>(n) * H, nd = static_cast<size_t>(n) * d;
    Tape<S> tape;
    forward_with_tape(D, config, off, params, x, t, tape, static_cast<S*>(nullptr));

    // v = C (x^L - x^0) with C the (symmetric) mean removal: dL/dx^L = C dL_dv, and x^0 enters
    // directly with -C dL_dv.
    std::vector<S> gx(nd), gx0(nd), gh(nH, S(0.0)), gx_in(nd), gh_in(nH);
    for (int k = 0; k < d; ++k) {
        S mean = 0.0;
        for (int i = 0; i < n; ++i) mean += dL_dv[i * d + k];
        mean /= n;
        for (int i = 0; i < n; ++i) {
            gx[i * d + k] = dL_dv[i * d + k] - mean;
            gx0[i * d + k] = -gx[i * d + k];
        }
    }
    for (int l = L - 1; l >= 0; --l) {
        layer_backward(D, params, off.layers[l], &tape.h[l * nH], &tape.x[l * nd], x,
                       &tape.M[l * nH], gh.data(), gx.data(), gh_in.data(), gx_in.data(),
                       gx0.data(), dL_dparams);
        gh.swap(gh_in);
        gx.swap(gx_in);
    }
    // h0 = emb_w f + emb_b
    const std::vector<double> f = node_features(config, t);
    for (int i = 0; i < n; ++i) {
        for (int o = 0; o < H; ++o) dL_dparams[off.emb_b + o] += gh[i * H + o];
        ger_add(dL_dparams + off.emb_w, D.F, H, D.F, &gh[i * H], &f[i * D.F]);
    }
    if (dL_dx) {
        for (size_t k = 0; k < nd; ++k) dL_dx[k] = gx[k] + gx0[k];
    }
}

}  // namespace
}  // namespace eqflow::cpu
