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

#include "cpu/egnn_reverse.h"
#include "eqflow/error.h"

namespace eqflow::cpu {

namespace {

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
    const EdgeWeights<double> ew(D, p, lo);
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
