// CPU reference of the EGNN vector field: forward, reverse mode (backward) and forward mode
// (Jacobian-vector products, hence the exact divergence). Plain loops in double.
//
// One layer (E_GCL), for every ordered pair i != j (fully connected, no self-loops):
//   d_ij = x_i - x_j,  r_ij = |d_ij|^2,  a_ij = |x0_i - x0_j|^2 (input coordinates)
//   z1 = W1 [h_i, h_j, r_ij, a_ij] + b1 = P_i + Q_j + w1r r_ij + w1a a_ij
//        with P_i = W1a h_i + b1 and Q_j = W1b h_j computed once per node
//   s1 = SiLU(z1);  z2 = W2 s1 + b2;  m = SiLU(z2)
//   attention: g = sigmoid(wa . m + ba), me = g m;  else me = m
//   zc = Wc1 me + bc1;  sc = SiLU(zc);  c = wc2 . sc;  phi = cr tanh(c) (tanh) or c
//   x_i += d_ij phi / (sqrt(r_ij + 1e-8) + 1);   M_i += me
// then per node, with the OLD h: h_i += Wn2 SiLU(Wn1 [h_i, M_i] + bn1) + bn2.
// v = x^L - x^0 with its particle mean removed.
//
// Backward keeps h^l, x^l and M^l per layer (O(L n H) memory) and recomputes the per-edge
// quantities instead of storing n^2 H edge tensors. Forward mode carries K tangents of h and x
// through one primal pass: every primal edge quantity is computed once and reused by all K.
#include "cpu/egnn_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "eqflow/error.h"

namespace eqflow::cpu {

namespace {

// docs/design.md section 4: d_ij / (sqrt(r_ij + 1e-8) + 1).
constexpr double kNormEps = 1e-8;

// The activation math is templated on the scalar type S of the activations (double, or Dual
// for forward-over-reverse second derivatives); parameters are always double. With S = double
// every expression is the one the untemplated code had, in the same order: results are
// bit-identical. exp / tanh / sqrt are found by overload: std:: for double, cpu:: for Dual.
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

// y[o] = b[o] + sum_k W[o*ld + k] x[k]  (o < rows, k < cols; b nullable)
template <class X, class Y>
void gemv(const double* W, int64_t ld, int rows, int cols, const X* x, const double* b, Y* y) {
    for (int o = 0; o < rows; ++o) {
        const double* w = W + o * ld;
        Y acc = b ? Y(b[o]) : Y(0.0);
        for (int k = 0; k < cols; ++k) acc += w[k] * x[k];
        y[o] = acc;
    }
}

// x[k] += sum_o W[o*ld + k] y[o]
template <class S>
void gemv_t_add(const double* W, int64_t ld, int rows, int cols, const S* y, S* x) {
    for (int o = 0; o < rows; ++o) {
        const double* w = W + o * ld;
        const S yo = y[o];
        for (int k = 0; k < cols; ++k) x[k] += w[k] * yo;
    }
}

// dW[o*ld + k] += y[o] x[k]
template <class S, class X>
void ger_add(S* dW, int64_t ld, int rows, int cols, const S* y, const X* x) {
    for (int o = 0; o < rows; ++o) {
        S* w = dW + o * ld;
        const S yo = y[o];
        for (int k = 0; k < cols; ++k) w[k] += yo * x[k];
    }
}
// The dual parameter gradient is only ever read for its tangent (egnn_divergence_backward_one),
// so the outer products, the bulk of the reverse pass, skip the value part: (y x).d only.
void ger_add(Dual* dW, int64_t ld, int rows, int cols, const Dual* y, const Dual* x) {
    for (int o = 0; o < rows; ++o) {
        Dual* w = dW + o * ld;
        const Dual yo = y[o];
        for (int k = 0; k < cols; ++k) w[k].d += yo.v * x[k].d + yo.d * x[k].v;
    }
}

// y[o] = b[o] + sum_k xt[k][o] x[k] with the weight stored transposed, xt [cols][rows]: the
// inner loop runs over o with unit stride, which compilers vectorise without reassociating
// sums (unlike the dot products of gemv). Used for the per-edge H x H products.
template <class S>
void gemv_transposed(const double* Wt, int rows, int cols, const S* x, const double* b, S* y) {
    for (int o = 0; o < rows; ++o) y[o] = b ? S(b[o]) : S(0.0);
    for (int k = 0; k < cols; ++k) {
        const S xk = x[k];
        const double* w = Wt + static_cast<int64_t>(k) * rows;
        for (int o = 0; o < rows; ++o) y[o] += xk * w[o];
    }
}

// W [rows][cols] -> Wt [cols][rows]
std::vector<double> transpose(const double* W, int rows, int cols) {
    std::vector<double> Wt(static_cast<size_t>(rows) * cols);
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

Dims dims_of(const EgnnConfig& c) {
    return Dims{c.n_particles, c.dim,       c.hidden, c.in_features(),
                c.layers,      c.attention, c.tanh,   c.effective_coords_range()};
}

// f [n][F]: one-hot type (when typed), then t.
std::vector<double> node_features(const EgnnConfig& c, double t) {
    const int n = c.n_particles, F = c.in_features(), T = c.num_types();
    std::vector<double> f(static_cast<size_t>(n) * F, 0.0);
    for (int i = 0; i < n; ++i) {
        if (T > 0) f[i * F + c.atom_types[i]] = 1.0;
        f[i * F + T] = t;
    }
    return f;
}

// h0 [n][H] = emb_w f + emb_b
void embed(const Dims& D, const double* p, const EgnnOffsets& off, const double* f, double* h0) {
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
struct EdgeWeights {
    std::vector<double> W2t, Wc1t;
    EdgeWeights(const Dims& D, const double* p, const EgnnLayerOffsets& lo)
        : W2t(transpose(p + lo.edge_w2, D.H, D.H)), Wc1t(transpose(p + lo.coord_w0, D.H, D.H)) {}
};

template <class S>
void edge_forward(const Dims& D, const double* p, const EgnnLayerOffsets& lo, const EdgeWeights& ew,
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
    const double* W1 = p + lo.edge_w0;
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
template <class S>
void node_projections(const Dims& D, const double* p, const EgnnLayerOffsets& lo, const S* h, S* P,
                      S* Q) {
    const int H = D.H;
    const int64_t ld1 = 2 * H + 2;
    for (int i = 0; i < D.n; ++i) {
        gemv(p + lo.edge_w0, ld1, H, H, h + i * H, p + lo.edge_b0, P + i * H);
        gemv(p + lo.edge_w0 + H, ld1, H, H, h + i * H, nullptr, Q + i * H);
    }
}

// One layer forward. h, x [n][*] -> h_out, x_out; M [n][H] = sum_j me_ij.
template <class S>
void layer_forward(const Dims& D, const double* p, const EgnnLayerOffsets& lo, const S* h,
                   const S* x, const S* x0, S* h_out, S* x_out, S* M) {
    const int n = D.n, d = D.d, H = D.H;
    std::vector<S> P(static_cast<size_t>(n) * H), Q(static_cast<size_t>(n) * H);
    node_projections(D, p, lo, h, P.data(), Q.data());
    std::copy(x, x + static_cast<size_t>(n) * d, x_out);
    std::fill(M, M + static_cast<size_t>(n) * H, S(0.0));
    const EdgeWeights ew(D, p, lo);
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
template <class S>
void forward_with_tape(const Dims& D, const EgnnConfig& c, const EgnnOffsets& off, const double* p,
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
template <class S>
void layer_backward(const Dims& D, const double* p, const EgnnLayerOffsets& lo, const S* h,
                    const S* x, const S* x0, const S* M, const S* gh_out, const S* gx_out, S* gh_in,
                    S* gx_in, S* gx0, S* dp) {
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
    const double* W1 = p + lo.edge_w0;
    S* dW1 = dp + lo.edge_w0;
    const EdgeWeights ew(D, p, lo);
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

// One layer in forward mode: the primal (as layer_forward) plus K tangents.
// hd [K][n][H] (ignored when h_tangent_zero), xd, x0d [K][n][d] -> hd_out (skipped when null),
// xd_out [K][n][d].
void layer_jvp(const Dims& D, const double* p, const EgnnLayerOffsets& lo, int K, const double* h,
               const double* x, const double* x0, const double* hd, bool h_tangent_zero,
               const double* xd, const double* x0d, double* h_out, double* x_out, double* hd_out,
               double* xd_out) {
    const int n = D.n, d = D.d, H = D.H;
    const int64_t ld1 = 2 * H + 2;
    const size_t nH = static_cast<size_t>(n) * H, nd = static_cast<size_t>(n) * d;
    std::vector<double> P(nH), Q(nH), M(nH, 0.0);
    node_projections(D, p, lo, h, P.data(), Q.data());
    // Tangents of P and Q: W1a hd, W1b hd (zero when hd is).
    std::vector<double> Pd(K * nH, 0.0), Qd(K * nH, 0.0), Md(K * nH, 0.0);
    if (!h_tangent_zero) {
        for (int q = 0; q < K; ++q) {
            for (int i = 0; i < n; ++i) {
                const double* hdi = hd + q * nH + i * H;
                gemv(p + lo.edge_w0, ld1, H, H, hdi, nullptr, &Pd[q * nH + i * H]);
                gemv(p + lo.edge_w0 + H, ld1, H, H, hdi, nullptr, &Qd[q * nH + i * H]);
            }
        }
    }
    std::memcpy(x_out, x, sizeof(double) * nd);
    std::memcpy(xd_out, xd, sizeof(double) * K * nd);

    const double* W1 = p + lo.edge_w0;
    const EdgeWeights ew(D, p, lo);
    std::vector<double> ds1(H), dm(H), dsc(H), s1d(H), z2d(H), med(H), zcd(H), dd(d);
    Edge<double> e(D);
    for (int i = 0; i < n; ++i) {
        for (int j = 0; j < n; ++j) {
            if (j == i) continue;
            edge_forward(D, p, lo, ew, &P[i * H], &Q[j * H], x + i * d, x + j * d, x0 + i * d,
                         x0 + j * d, e);
            const double s = e.phi / e.nrm;
            for (int k = 0; k < d; ++k) x_out[i * d + k] += e.dx[k] * s;
            for (int o = 0; o < H; ++o) M[i * H + o] += e.me[o];
            for (int o = 0; o < H; ++o) {
                ds1[o] = dsilu(e.z1[o]);
                dm[o] = dsilu(e.z2[o]);
                dsc[o] = dsilu(e.zc[o]) * p[lo.coord_w2 + o];  // dc/dzc
            }
            const double dphi_dc = D.tanh ? D.cr * (1.0 - e.th * e.th) : 1.0;
            const double dnrm_dr = 0.5 / (e.nrm - 1.0);
            const double gate_slope = e.g * (1.0 - e.g);
            for (int q = 0; q < K; ++q) {
                const double* xdq = xd + q * nd;
                const double* x0dq = x0d + q * nd;
                double rd = 0.0, ad = 0.0;
                bool moves = false;
                for (int k = 0; k < d; ++k) {
                    dd[k] = xdq[i * d + k] - xdq[j * d + k];
                    const double dd0 = x0dq[i * d + k] - x0dq[j * d + k];
                    rd += 2.0 * e.dx[k] * dd[k];
                    ad += 2.0 * e.dx0[k] * dd0;
                    moves = moves || dd[k] != 0.0 || dd0 != 0.0;
                }
                // With no tangent on h, a direction that moves neither x_i - x_j nor x0_i - x0_j
                // has a zero tangent on this edge: skip it (most basis directions in layer 0).
                if (h_tangent_zero && !moves) continue;
                const double* Pdi = &Pd[q * nH + i * H];
                const double* Qdj = &Qd[q * nH + j * H];
                for (int o = 0; o < H; ++o) {
                    s1d[o] = ds1[o] * (Pdi[o] + Qdj[o] + W1[o * ld1 + 2 * H] * rd +
                                       W1[o * ld1 + 2 * H + 1] * ad);
                }
                gemv_transposed(ew.W2t.data(), H, H, s1d.data(), nullptr, z2d.data());
                if (D.attention) {
                    double zad = 0.0;
                    for (int o = 0; o < H; ++o) {
                        z2d[o] *= dm[o];  // now md
                        zad += p[lo.att_w0 + o] * z2d[o];
                    }
                    const double gd = gate_slope * zad;
                    for (int o = 0; o < H; ++o) med[o] = z2d[o] * e.g + e.m[o] * gd;
                } else {
                    for (int o = 0; o < H; ++o) med[o] = z2d[o] * dm[o];
                }
                gemv_transposed(ew.Wc1t.data(), H, H, med.data(), nullptr, zcd.data());
                double cd = 0.0;
                for (int o = 0; o < H; ++o) cd += dsc[o] * zcd[o];
                const double phid = dphi_dc * cd;
                const double nrmd = dnrm_dr * rd;
                const double coef = phid / e.nrm - e.phi * nrmd / (e.nrm * e.nrm);
                double* xdo = xd_out + q * nd + i * d;
                for (int k = 0; k < d; ++k) xdo[k] += dd[k] * s + e.dx[k] * coef;
                double* Mdq = &Md[q * nH + i * H];
                for (int o = 0; o < H; ++o) Mdq[o] += med[o];
            }
        }
    }

    // Node update, primal and (when wanted) tangents.
    std::vector<double> u(2 * H), zn(H), sn(H), y(H), ud(2 * H), znd(H);
    for (int i = 0; i < n; ++i) {
        for (int k = 0; k < H; ++k) {
            u[k] = h[i * H + k];
            u[H + k] = M[i * H + k];
        }
        gemv(p + lo.node_w0, 2 * H, H, 2 * H, u.data(), p + lo.node_b0, zn.data());
        for (int k = 0; k < H; ++k) sn[k] = silu(zn[k]);
        gemv(p + lo.node_w2, H, H, H, sn.data(), p + lo.node_b2, y.data());
        for (int k = 0; k < H; ++k) h_out[i * H + k] = h[i * H + k] + y[k];
        if (!hd_out) continue;
        for (int q = 0; q < K; ++q) {
            for (int k = 0; k < H; ++k) {
                ud[k] = h_tangent_zero ? 0.0 : hd[q * nH + i * H + k];
                ud[H + k] = Md[q * nH + i * H + k];
            }
            gemv(p + lo.node_w0, 2 * H, H, 2 * H, ud.data(), nullptr, znd.data());
            for (int k = 0; k < H; ++k) znd[k] *= dsilu(zn[k]);
            gemv(p + lo.node_w2, H, H, H, znd.data(), nullptr, y.data());
            for (int k = 0; k < H; ++k) hd_out[q * nH + i * H + k] = ud[k] + y[k];
        }
    }
}

// Reverse mode of one sample in the scalar type S (double: the backward pass; Dual: forward
// over reverse). dL_dparams [P] += dL/dparams; dL_dx [n][d] = dL/dx (nullable).
template <class S>
void backward_one(const EgnnConfig& config, const EgnnOffsets& off, const double* params,
                  const S* x, double t, const S* dL_dv, S* dL_dparams, S* dL_dx) {
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

void egnn_forward_one(const EgnnConfig& config, const EgnnOffsets& off, const double* params,
                      const double* x, double t, double* v) {
    Tape<double> tape;
    forward_with_tape(dims_of(config), config, off, params, x, t, tape, v);
}

void egnn_backward_one(const EgnnConfig& config, const EgnnOffsets& off, const double* params,
                       const double* x, double t, const double* dL_dv, double* dL_dparams,
                       double* dL_dx) {
    backward_one<double>(config, off, params, x, t, dL_dv, dL_dparams, dL_dx);
}

// Forward over reverse. div v = sum_q e_q^T J e_q. For direction q, the reverse pass of
// L_q = g e_q^T v (dL_dv = g e_q, no tangent) run on duals whose x carries the tangent e_q
// returns, in the tangent parts, d/de [grad L_q](x + e e_q) = g grad_{params, x}(e_q^T J e_q):
// the mixed second derivative along the one direction, by the chain rule through every
// operation of the reverse pass. Summing over the n*d directions gives g grad div. Each
// direction is one dual reverse pass (primal recomputed): memory stays that of one backward
// (O(L n H)), and the cost is about n*d dual backward passes, each ~3x a plain one.
void egnn_divergence_backward_one(const EgnnConfig& config, const EgnnOffsets& off,
                                  const double* params, const double* x, double t, double g,
                                  Dual* dp, double* dL_dx) {
    const int nd = config.n_particles * config.dim;
    std::vector<Dual> xs(static_cast<size_t>(nd)), dv(static_cast<size_t>(nd)),
        gx(static_cast<size_t>(nd));
    for (int k = 0; k < nd; ++k) xs[k] = Dual(x[k], 0.0);
    if (dL_dx) std::fill(dL_dx, dL_dx + nd, 0.0);
    for (int q = 0; q < nd; ++q) {
        xs[q].d = 1.0;
        dv[q] = Dual(g, 0.0);
        backward_one<Dual>(config, off, params, xs.data(), t, dv.data(), dp,
                           dL_dx ? gx.data() : nullptr);
        if (dL_dx)
            for (int k = 0; k < nd; ++k) dL_dx[k] += gx[k].d;
        xs[q].d = 0.0;
        dv[q] = Dual(0.0, 0.0);
    }
}

void egnn_jvp_one(const EgnnConfig& config, const EgnnOffsets& off, const double* params,
                  const double* x, double t, int K, const double* xdot, double* v, double* vdot) {
    const Dims D = dims_of(config);
    const int n = D.n, d = D.d, H = D.H, L = D.L;
    const size_t nH = static_cast<size_t>(n) * H, nd = static_cast<size_t>(n) * d;
    std::vector<double> h(nH), h_next(nH), xs(x, x + nd), xs_next(nd);
    std::vector<double> hd(K * nH, 0.0), hd_next(K * nH), xd(xdot, xdot + K * nd), xd_next(K * nd);
    const std::vector<double> f = node_features(config, t);
    embed(D, params, off, f.data(), h.data());
    for (int l = 0; l < L; ++l) {
        const bool last = l == L - 1;
        // h^0 depends on t only, so its tangent is zero in layer 0.
        layer_jvp(D, params, off.layers[l], K, h.data(), xs.data(), x, hd.data(), l == 0, xd.data(),
                  xdot, h_next.data(), xs_next.data(), last ? nullptr : hd_next.data(),
                  xd_next.data());
        h.swap(h_next);
        xs.swap(xs_next);
        if (!last) hd.swap(hd_next);
        xd.swap(xd_next);
    }
    // v = C (x^L - x^0), vdot = C (xd^L - xdot)
    for (int k = 0; k < d; ++k) {
        if (v) {
            double mean = 0.0;
            for (int i = 0; i < n; ++i) mean += xs[i * d + k] - x[i * d + k];
            mean /= n;
            for (int i = 0; i < n; ++i) v[i * d + k] = xs[i * d + k] - x[i * d + k] - mean;
        }
        for (int q = 0; q < K; ++q) {
            const double* a = &xd[q * nd];
            const double* b = xdot + q * nd;
            double mean = 0.0;
            for (int i = 0; i < n; ++i) mean += a[i * d + k] - b[i * d + k];
            mean /= n;
            for (int i = 0; i < n; ++i)
                vdot[q * nd + i * d + k] = a[i * d + k] - b[i * d + k] - mean;
        }
    }
}

std::vector<double> egnn_unit_tangents(int nd) {
    std::vector<double> eye(static_cast<size_t>(nd) * nd, 0.0);
    for (int q = 0; q < nd; ++q) eye[static_cast<size_t>(q) * nd + q] = 1.0;
    return eye;
}

double egnn_divergence_one(const EgnnConfig& config, const EgnnOffsets& off, const double* params,
                           const double* x, double t, const double* eye, double* vdot, double* v) {
    const int nd = config.n_particles * config.dim;
    egnn_jvp_one(config, off, params, x, t, nd, eye, v, vdot);
    double tr = 0.0;
    for (int q = 0; q < nd; ++q) tr += vdot[static_cast<size_t>(q) * nd + q];
    return tr;
}

}  // namespace eqflow::cpu
