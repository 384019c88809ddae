// src/common/kabsch_math.h: the optimal rotation of one configuration onto another (Kabsch /
// orthogonal Procrustes without translation), as small EQFLOW_HD functions in double that the
// CPU reference (src/cpu/kabsch_cpu.cpp) and the CUDA kernels share (like eqflow/philox.h).
//
// Convention: H[a][b] = sum_i y_ia x_ib (y target, x mobile, row-major d x d). The best rotation
// maximises sum_ab R_ab H_ab = sum_i y_i . (R x_i), i.e. minimises sum_i |y_i - R x_i|^2.
//   2D: closed form, R = rot(atan2(H10 - H01, H00 + H11)).
//   3D: Horn's quaternion method: the unit eigenvector of the largest eigenvalue of a symmetric
//       4 x 4 matrix N built from H. Fast path (the idea of Theobald's QCP): the largest root of
//       N's characteristic quartic by Newton from an upper bound, the eigenvector as the largest
//       column of adj(N - lambda I). When the top eigenvalue is not well separated (the adjugate
//       is small: near-collinear inputs, or det H < 0 with sigma2 ~ sigma3) the eigenvector would
//       lose accuracy, and cyclic Jacobi on N decides instead, as it always did before. Always a
//       proper rotation, also when the top eigenvalue is degenerate (collinear, planar-symmetric
//       or coincident inputs: any top eigenvector is optimal; H = 0 gives the identity).
// Reflections (on request): the best improper Q is R' S with S = diag(1, .., 1, -1) and R' the
// best rotation for H S; it is taken only when strictly better than the best rotation.
#pragma once

#include <cmath>
#include <cstdint>

#include "eqflow/export.h"

// In device code the eigen-solvers stay out of line: inlined and unrolled into a kernel they
// take hundreds of registers, which costs the kernels around them their occupancy.
#if defined(__CUDA_ARCH__)
#define EQFLOW_KABSCH_FN __device__ __noinline__
#else
#define EQFLOW_KABSCH_FN EQFLOW_HD inline
#endif

namespace eqflow::kabsch_math {

// Eigen-decomposition of a symmetric N x N matrix a (row-major, destroyed: its diagonal ends up
// holding the eigenvalues) by cyclic Jacobi rotations; v receives the eigenvectors as COLUMNS.
template <int N>
EQFLOW_HD inline void jacobi_eigen(double* a, double* v) {
    for (int i = 0; i < N; ++i)
        for (int j = 0; j < N; ++j) v[i * N + j] = i == j ? 1.0 : 0.0;
    for (int sweep = 0; sweep < 50; ++sweep) {
        double off = 0.0, diag = 0.0;
        for (int p = 0; p < N; ++p) {
            diag += a[p * N + p] * a[p * N + p];
            for (int q = p + 1; q < N; ++q) off += a[p * N + q] * a[p * N + q];
        }
        if (off <= 1e-30 * diag || off == 0.0) break;  // relative: off-diagonal at rounding level
        for (int p = 0; p < N; ++p) {
            for (int q = p + 1; q < N; ++q) {
                const double apq = a[p * N + q];
                if (apq == 0.0) continue;
                const double theta = (a[q * N + q] - a[p * N + p]) / (2.0 * apq);
                const double t =
                    (theta >= 0.0 ? 1.0 : -1.0) / (::fabs(theta) + ::sqrt(theta * theta + 1.0));
                const double c = 1.0 / ::sqrt(t * t + 1.0);
                const double s = t * c;
                for (int k = 0; k < N; ++k) {  // A <- A J (columns p, q)
                    const double akp = a[k * N + p], akq = a[k * N + q];
                    a[k * N + p] = c * akp - s * akq;
                    a[k * N + q] = s * akp + c * akq;
                }
                for (int k = 0; k < N; ++k) {  // A <- J^T A (rows p, q)
                    const double apk = a[p * N + k], aqk = a[q * N + k];
                    a[p * N + k] = c * apk - s * aqk;
                    a[q * N + k] = s * apk + c * aqk;
                }
                for (int k = 0; k < N; ++k) {  // V <- V J
                    const double vkp = v[k * N + p], vkq = v[k * N + q];
                    v[k * N + p] = c * vkp - s * vkq;
                    v[k * N + q] = s * vkp + c * vkq;
                }
            }
        }
    }
}

// Best proper rotation for H (2D); returns the score sum_ab R_ab H_ab.
EQFLOW_HD inline double best_rotation_2d(const double* h, double* r) {
    const double a = h[0] + h[3], b = h[2] - h[1];
    const double norm = ::sqrt(a * a + b * b);
    const double c = norm > 0.0 ? a / norm : 1.0, s = norm > 0.0 ? b / norm : 0.0;
    r[0] = c;
    r[1] = -s;
    r[2] = s;
    r[3] = c;
    return norm;
}

// The top eigenvector q [4] of Horn's matrix n [4][4] (traceless, symmetric) without iterating
// rotations; returns false (q untouched) when the top eigenvalue is too close to the next one for
// the adjugate to give q to near double precision, or on H = 0. hh = |H|_F^2, det_h = det H.
EQFLOW_HD inline bool horn_top_eigenvector_fast(const double* n, double hh, double det_h,
                                                double* q) {
    // det(lambda I - N) = lambda^4 + c2 lambda^2 + c1 lambda + c0 (N traceless; Newton's identities
    // with tr N^2 = 4 |H|^2 and tr N^3 = 24 det H).
    const double c2 = -2.0 * hh, c1 = -8.0 * det_h;
    // All 2 x 2 minors of rows (0, 1) and (2, 3) of a 4 x 4 matrix give its determinant and
    // adjugate (Laplace expansion by complementary minors).
    const auto minors = [](const double* a, double* s, double* c) {
        s[0] = a[0] * a[5] - a[4] * a[1];
        s[1] = a[0] * a[6] - a[4] * a[2];
        s[2] = a[0] * a[7] - a[4] * a[3];
        s[3] = a[1] * a[6] - a[5] * a[2];
        s[4] = a[1] * a[7] - a[5] * a[3];
        s[5] = a[2] * a[7] - a[6] * a[3];
        c[0] = a[8] * a[13] - a[12] * a[9];
        c[1] = a[8] * a[14] - a[12] * a[10];
        c[2] = a[8] * a[15] - a[12] * a[11];
        c[3] = a[9] * a[14] - a[13] * a[10];
        c[4] = a[9] * a[15] - a[13] * a[11];
        c[5] = a[10] * a[15] - a[14] * a[11];
    };
    double s[6], c[6];
    minors(n, s, c);
    const double c0 =
        s[0] * c[5] - s[1] * c[4] + s[2] * c[3] + s[3] * c[2] - s[4] * c[1] + s[5] * c[0];
    // Upper bound of the top eigenvalue sigma1 + sigma2 +- sigma3 <= sqrt(3 |H|^2); from above
    // Newton on a real-rooted polynomial descends monotonically onto the largest root.
    const double bound = ::sqrt(1.5 * -c2);
    if (!(bound > 0.0)) return false;
    double lambda = bound;
    for (int it = 0; it < 60; ++it) {
        const double l2 = lambda * lambda;
        const double p = (l2 + c2) * l2 + c1 * lambda + c0;
        const double dp = (4.0 * l2 + 2.0 * c2) * lambda + c1;
        if (!(dp > 0.0)) break;
        const double next = lambda - p / dp;
        if (!(next < lambda)) break;  // converged: rounding no longer moves it down
        lambda = next;
    }
    double a[16];
    for (int k = 0; k < 16; ++k) a[k] = n[k];
    for (int k = 0; k < 4; ++k) a[k * 5] -= lambda;
    minors(a, s, c);
    // Adjugate of a (symmetric, as a is): at a simple eigenvalue adj = prod_k (l_k - l) q q^T, so
    // its largest column is q scaled by the product of the gaps to the other eigenvalues.
    double adj[16];
    adj[0] = a[5] * c[5] - a[6] * c[4] + a[7] * c[3];
    adj[1] = -a[1] * c[5] + a[2] * c[4] - a[3] * c[3];
    adj[2] = a[13] * s[5] - a[14] * s[4] + a[15] * s[3];
    adj[3] = -a[9] * s[5] + a[10] * s[4] - a[11] * s[3];
    adj[4] = -a[4] * c[5] + a[6] * c[2] - a[7] * c[1];
    adj[5] = a[0] * c[5] - a[2] * c[2] + a[3] * c[1];
    adj[6] = -a[12] * s[5] + a[14] * s[2] - a[15] * s[1];
    adj[7] = a[8] * s[5] - a[10] * s[2] + a[11] * s[1];
    adj[8] = a[4] * c[4] - a[5] * c[2] + a[7] * c[0];
    adj[9] = -a[0] * c[4] + a[1] * c[2] - a[3] * c[0];
    adj[10] = a[12] * s[4] - a[13] * s[2] + a[15] * s[0];
    adj[11] = -a[8] * s[4] + a[9] * s[2] - a[11] * s[0];
    adj[12] = -a[4] * c[3] + a[5] * c[1] - a[6] * c[0];
    adj[13] = a[0] * c[3] - a[1] * c[1] + a[2] * c[0];
    adj[14] = -a[12] * s[3] + a[13] * s[1] - a[14] * s[0];
    adj[15] = a[8] * s[3] - a[9] * s[1] + a[10] * s[0];
    int col = 0;
    double best = -1.0;
    for (int j = 0; j < 4; ++j) {
        double m = 0.0;
        for (int i = 0; i < 4; ++i) m += adj[i * 4 + j] * adj[i * 4 + j];
        if (m > best) {
            best = m;
            col = j;
        }
    }
    // The gaps' product, relative to bound^3, bounds how much rounding in N and lambda can turn
    // q; below 1e-2 (a gap under ~1e-3 of the scale) Jacobi, which needs no separation, decides.
    constexpr double kMinGapProduct = 1e-2;
    const double b3 = bound * bound * bound;
    if (!(best >= kMinGapProduct * kMinGapProduct * b3 * b3)) return false;
    for (int i = 0; i < 4; ++i) q[i] = adj[i * 4 + col];
    return true;
}

// Best proper rotation for H (3D, Horn); returns the score sum_ab R_ab H_ab.
EQFLOW_HD inline double best_rotation_3d(const double* h, double* r) {
    // S_ab = sum_i x_ia y_ib = H_ba.
    const double sxx = h[0], syx = h[1], szx = h[2];
    const double sxy = h[3], syy = h[4], szy = h[5];
    const double sxz = h[6], syz = h[7], szz = h[8];
    double n[16] = {sxx + syy + szz, syz - szy,       szx - sxz,        sxy - syx,
                    syz - szy,       sxx - syy - szz, sxy + syx,        szx + sxz,
                    szx - sxz,       sxy + syx,       -sxx + syy - szz, syz + szy,
                    sxy - syx,       szx + sxz,       syz + szy,        -sxx - syy + szz};
    double hh = 0.0;
    for (int k = 0; k < 9; ++k) hh += h[k] * h[k];
    const double det_h = h[0] * (h[4] * h[8] - h[5] * h[7]) - h[1] * (h[3] * h[8] - h[5] * h[6]) +
                         h[2] * (h[3] * h[7] - h[4] * h[6]);
    double q0, q1, q2, q3;
    double qf[4];
    if (horn_top_eigenvector_fast(n, hh, det_h, qf)) {
        q0 = qf[0];
        q1 = qf[1];
        q2 = qf[2];
        q3 = qf[3];
    } else {
        double v[16];
        jacobi_eigen<4>(n, v);
        int best = 0;
        for (int k = 1; k < 4; ++k)
            if (n[k * 4 + k] > n[best * 4 + best]) best = k;
        q0 = v[0 * 4 + best];
        q1 = v[1 * 4 + best];
        q2 = v[2 * 4 + best];
        q3 = v[3 * 4 + best];
    }
    const double qn = ::sqrt(q0 * q0 + q1 * q1 + q2 * q2 + q3 * q3);
    q0 /= qn;
    q1 /= qn;
    q2 /= qn;
    q3 /= qn;
    r[0] = q0 * q0 + q1 * q1 - q2 * q2 - q3 * q3;
    r[1] = 2.0 * (q1 * q2 - q0 * q3);
    r[2] = 2.0 * (q1 * q3 + q0 * q2);
    r[3] = 2.0 * (q1 * q2 + q0 * q3);
    r[4] = q0 * q0 - q1 * q1 + q2 * q2 - q3 * q3;
    r[5] = 2.0 * (q2 * q3 - q0 * q1);
    r[6] = 2.0 * (q1 * q3 - q0 * q2);
    r[7] = 2.0 * (q2 * q3 + q0 * q1);
    r[8] = q0 * q0 - q1 * q1 - q2 * q2 + q3 * q3;
    double score = 0.0;
    for (int k = 0; k < 9; ++k) score += r[k] * h[k];
    return score;
}

// The best orthogonal d x d matrix (d = 2 or 3) for H: proper unless `allow_reflection` and an
// improper one is strictly better.
EQFLOW_KABSCH_FN void best_orthogonal(const double* h, int d, bool allow_reflection, double* r) {
    const double score = d == 2 ? best_rotation_2d(h, r) : best_rotation_3d(h, r);
    if (!allow_reflection) return;
    double hs[9], rs[9];
    for (int a = 0; a < d; ++a)
        for (int b = 0; b < d; ++b) hs[a * d + b] = b == d - 1 ? -h[a * d + b] : h[a * d + b];
    const double score_s = d == 2 ? best_rotation_2d(hs, rs) : best_rotation_3d(hs, rs);
    if (score_s > score) {
        for (int a = 0; a < d; ++a)
            for (int b = 0; b < d; ++b) r[a * d + b] = b == d - 1 ? -rs[a * d + b] : rs[a * d + b];
    }
}

// Principal axes of a configuration: the eigenvectors of cov = sum_i x_i x_i^T ([d][d], d = 2, 3),
// as the columns of f [d][d], by decreasing eigenvalue (ties keep Jacobi's order). They turn with
// the configuration (up to the sign of each axis), which the eqot starts rely on.
EQFLOW_KABSCH_FN void principal_frame(const double* cov, int d, double* f) {
    double a[9], v[9];
    for (int k = 0; k < d * d; ++k) a[k] = cov[k];
    if (d == 2) {
        jacobi_eigen<2>(a, v);
    } else {
        jacobi_eigen<3>(a, v);
    }
    int order[3] = {0, 1, 2};
    for (int i = 0; i < d; ++i)
        for (int j = i + 1; j < d; ++j)
            if (a[order[j] * d + order[j]] > a[order[i] * d + order[i]]) {
                const int t = order[i];
                order[i] = order[j];
                order[j] = t;
            }
    for (int r = 0; r < d; ++r)
        for (int k = 0; k < d; ++k) f[r * d + k] = v[r * d + order[k]];
}

// R0 = F0 S F1^T with S = diag(+-1) from the bits of `mask` (bit k set: axis k flipped): a start
// orientation mapping the principal axes of x1 onto those of x0. Returns det R0 (+-1).
EQFLOW_HD inline double frame_start(const double* f0, const double* f1, int d, int mask,
                                    double* r0) {
    for (int a = 0; a < d; ++a)
        for (int b = 0; b < d; ++b) {
            double s = 0.0;
            for (int k = 0; k < d; ++k)
                s += f0[a * d + k] * (((mask >> k) & 1) ? -1.0 : 1.0) * f1[b * d + k];
            r0[a * d + b] = s;
        }
    if (d == 2) return r0[0] * r0[3] - r0[1] * r0[2];
    return r0[0] * (r0[4] * r0[8] - r0[5] * r0[7]) - r0[1] * (r0[3] * r0[8] - r0[5] * r0[6]) +
           r0[2] * (r0[3] * r0[7] - r0[4] * r0[6]);
}

}  // namespace eqflow::kabsch_math
