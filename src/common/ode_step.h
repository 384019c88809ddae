// src/common/ode_step.h: the per-sample arithmetic of the ODE solvers of eqflow/ode.h
// (Dormand-Prince 5(4) with its step-size controller and Hairer's starting step, classical RK4,
// Euler), written as functions usable on the host and inside CUDA kernels (EQFLOW_HD). The device
// integrator (kernels/ode_gpu.cu, driven by src/ode_gpu.cpp) runs them with one thread per sample;
// the host solver ode_integrate (src/ode_host.h) runs the very same functions in a host loop. F is
// the precision of the field's inputs and outputs: float on the device, double on the host.
//
// With contraction into FMA turned off (the host builds with -ffp-contract=off,
// kernels/ode_gpu.cu with -fmad=false) the host and the device agree bit for bit on the same
// field apart from pow(), whose last bit may differ between glibc and CUDA (it only sets step
// sizes).
//
// State of one sample: the augmented vector y = [x (D), I, L] of S = D + 2 doubles: coordinates,
// divergence integral and path length. Arrays of a chunk of C samples:
//     y, ynew [C][S], k [stages][C][S] (stage s of sample b at k + s*C*S + b*S),
//     t, h [C], steps, accepted, rejected [C], flags [C] (kDone | kFailed | kLast).
// A plain C++ header: no CUDA types.
#pragma once

#include <math.h>

#include <cstdint>

#include "eqflow/export.h"

namespace eqflow::ode_step {

constexpr int kDone = 1;    // finished (reached t1, or failed)
constexpr int kFailed = 2;  // outputs become NaN
constexpr int kLast = 4;    // the current step was clipped to land on t1

// Step-size controller constants of eqflow/ode.h.
constexpr double kSafety = 0.9;
constexpr double kMinFactor = 0.2;
constexpr double kMaxFactor = 10.0;

// Finite (not NaN, not +-inf), without isfinite(), which differs between host and device headers.
EQFLOW_HD inline bool finite(double v) {
    return fabs(v) <= 1.7976931348623157e308;
}
EQFLOW_HD inline bool all_finite(const double* v, int64_t count) {
    for (int64_t i = 0; i < count; ++i)
        if (!finite(v[i])) return false;
    return true;
}
// std::min / std::max / std::clamp, with their exact NaN behaviour.
EQFLOW_HD inline double min_of(double a, double b) {
    return b < a ? b : a;
}
EQFLOW_HD inline double max_of(double a, double b) {
    return a < b ? b : a;
}
EQFLOW_HD inline double clamp_to(double v, double lo, double hi) {
    return v < lo ? lo : (hi < v ? hi : v);
}

// Dormand & Prince (1980) 5(4): nodes c, matrix a (row 6 is the 5th-order weights b5: FSAL),
// and the error weights e = b5 - b4.
EQFLOW_HD inline double dopri5_c(int s) {
    const double c[7] = {0.0, 1.0 / 5, 3.0 / 10, 4.0 / 5, 8.0 / 9, 1.0, 1.0};
    return c[s];
}
EQFLOW_HD inline double dopri5_a(int s, int j) {
    const double a[7][6] = {
        {0, 0, 0, 0, 0, 0},
        {1.0 / 5, 0, 0, 0, 0, 0},
        {3.0 / 40, 9.0 / 40, 0, 0, 0, 0},
        {44.0 / 45, -56.0 / 15, 32.0 / 9, 0, 0, 0},
        {19372.0 / 6561, -25360.0 / 2187, 64448.0 / 6561, -212.0 / 729, 0, 0},
        {9017.0 / 3168, -355.0 / 33, 46732.0 / 5247, 49.0 / 176, -5103.0 / 18656, 0},
        {35.0 / 384, 0, 500.0 / 1113, 125.0 / 192, -2187.0 / 6784, 11.0 / 84},
    };
    return a[s][j];
}
EQFLOW_HD inline double dopri5_e(int j) {
    const double e[7] = {35.0 / 384 - 5179.0 / 57600,
                         0.0,
                         500.0 / 1113 - 7571.0 / 16695,
                         125.0 / 192 - 393.0 / 640,
                         -2187.0 / 6784 + 92097.0 / 339200,
                         11.0 / 84 - 187.0 / 2100,
                         -1.0 / 40};
    return e[j];
}

// The chunk's arrays (device pointers in kernels, host pointers in tests).
struct Chunk {
    int64_t C = 0;  // capacity: the stride of the k stages is C * S
    int64_t D = 0;  // coordinates per sample; S = D + 2
    double* y = nullptr;
    double* ynew = nullptr;  // dopri5 only
    double* k = nullptr;
    double* t = nullptr;
    double* h = nullptr;
    int64_t* steps = nullptr;
    int64_t* accepted = nullptr;
    int64_t* rejected = nullptr;
    int* flags = nullptr;

    EQFLOW_HD int64_t S() const { return D + 2; }
    EQFLOW_HD double* row(double* base, int64_t b) const { return base + b * S(); }
    EQFLOW_HD double* stage(int s, int64_t b) const { return k + (s * C + b) * S(); }
};

struct Params {
    double t0 = 0.0, t1 = 1.0;
    double atol = 1e-4, rtol = 1e-4;
    double first_step = 0.0;  // > 0: use it (clipped to the span) instead of Hairer's guess
    int64_t max_steps = 100000;

    EQFLOW_HD double dir() const { return t1 > t0 ? 1.0 : -1.0; }
    EQFLOW_HD double span() const { return fabs(t1 - t0); }
};

// Sample b starts at x [D]: y = [x, 0, 0], t = t0, counters and flags cleared.
EQFLOW_HD inline void init_sample(const Chunk& c, const Params& p, int64_t b, const double* x) {
    double* y = c.row(c.y, b);
    for (int64_t i = 0; i < c.D; ++i) y[i] = x[i];
    y[c.D] = 0.0;
    y[c.D + 1] = 0.0;
    c.t[b] = p.t0;
    c.h[b] = 0.0;
    c.steps[b] = c.accepted[b] = c.rejected[b] = 0;
    c.flags[b] = 0;
}

// The augmented derivative k = [v, div, |v|] from the field's outputs (F: the field's precision,
// float on the device, double on the host).
template <class F>
EQFLOW_HD inline void store_derivative(int64_t D, const F* v, F div, double* k) {
    double norm2 = 0.0;
    for (int64_t i = 0; i < D; ++i) {
        const double vi = v[i];
        k[i] = vi;
        norm2 += vi * vi;
    }
    k[D] = div;
    k[D + 1] = sqrt(norm2);
}

// ---- Dormand-Prince 5(4) -----------------------------------------------------------------------

// Hairer, Norsett & Wanner II.4, first half (needs k1 = f(y0) in stage 0): the trial step h0
// (kept in h[b]) and the field input y0 + dir h0 k1 at t0 + dir h0 (x_out [D], t_out).
template <class F>
EQFLOW_HD inline void hairer_trial(const Chunk& c, const Params& p, int64_t b, F* x_out, F* t_out) {
    const int64_t D = c.D;
    const double* y = c.row(c.y, b);
    const double* k1 = c.stage(0, b);
    double d0 = 0, d1 = 0;
    for (int64_t i = 0; i <= D; ++i) {
        const double sc = p.atol + p.rtol * fabs(y[i]);
        d0 += (y[i] / sc) * (y[i] / sc);
        d1 += (k1[i] / sc) * (k1[i] / sc);
    }
    d0 = sqrt(d0 / (D + 1));
    d1 = sqrt(d1 / (D + 1));
    double h0 = (d0 < 1e-5 || d1 < 1e-5) ? 1e-6 : 0.01 * d0 / d1;
    if (!finite(h0)) h0 = 1e-6;
    h0 = min_of(h0, p.span());
    c.h[b] = h0;
    const double dir = p.dir();
    *t_out = static_cast<F>(p.t0 + dir * h0);
    for (int64_t i = 0; i < D; ++i) x_out[i] = static_cast<F>(y[i] + dir * h0 * k1[i]);
}

// Second half (needs k2 = f(trial) in stage 1): the first step h[b] (signed).
EQFLOW_HD inline void hairer_finish(const Chunk& c, const Params& p, int64_t b) {
    const int64_t D = c.D;
    const double* y = c.row(c.y, b);
    const double* k1 = c.stage(0, b);
    const double* k2 = c.stage(1, b);
    const double h0 = c.h[b];
    double d1 = 0, d2 = 0;
    for (int64_t i = 0; i <= D; ++i) {
        const double sc = p.atol + p.rtol * fabs(y[i]);
        d1 += (k1[i] / sc) * (k1[i] / sc);
        d2 += ((k2[i] - k1[i]) / sc) * ((k2[i] - k1[i]) / sc);
    }
    d1 = sqrt(d1 / (D + 1));
    d2 = sqrt(d2 / (D + 1)) / h0;
    const double m = max_of(d1, d2);
    const double h1 = m <= 1e-15 ? max_of(1e-6, h0 * 1e-3) : pow(0.01 / m, 1.0 / 5.0);
    double hs = min_of(100.0 * h0, h1);
    if (!finite(hs) || hs <= 0) hs = 1e-6;
    c.h[b] = p.dir() * min_of(hs, p.span());
}

// A user-given first step instead of Hairer's.
EQFLOW_HD inline void given_first_step(const Chunk& c, const Params& p, int64_t b) {
    c.h[b] = min_of(p.first_step, p.span()) * p.dir();
}

// After the start: a sample whose k1 is not finite has failed before its first step.
EQFLOW_HD inline void check_start(const Chunk& c, int64_t b) {
    if (!all_finite(c.stage(0, b), c.S())) c.flags[b] |= kDone | kFailed;
}

// Stage s = 1..6 of the current step: the field input x_out [D] at time t_out. Stage 1 first
// clips the step to land exactly on t1; stage 6 is the 5th-order solution, kept in ynew.
template <class F>
EQFLOW_HD inline void dopri5_stage(const Chunk& c, const Params& p, int64_t b, int s, F* x_out,
                                   F* t_out) {
    const int64_t S = c.S();
    if (s == 1) {
        const double remaining = p.t1 - c.t[b];
        const bool last = fabs(c.h[b]) >= fabs(remaining);
        c.flags[b] = last ? (c.flags[b] | kLast) : (c.flags[b] & ~kLast);
        if (last) c.h[b] = remaining;
    }
    const double h = c.h[b], t = c.t[b];
    const bool last = (c.flags[b] & kLast) != 0;
    *t_out = static_cast<F>(s == 6 ? (last ? p.t1 : t + h) : t + dopri5_c(s) * h);
    const double* y = c.row(c.y, b);
    double* ynew = s == 6 ? c.row(c.ynew, b) : nullptr;
    for (int64_t i = 0; i < S; ++i) {
        double acc = 0.0;
        for (int j = 0; j < s; ++j) acc += dopri5_a(s, j) * c.stage(j, b)[i];
        const double value = y[i] + h * acc;
        if (i < c.D) x_out[i] = static_cast<F>(value);
        if (ynew) ynew[i] = value;
    }
}

// RMS over the D coordinates and I of err_i / (atol + rtol max(|y_i|, |ynew_i|)),
// err = h sum_j e_j k_j.
EQFLOW_HD inline double dopri5_error_norm(const Chunk& c, const Params& p, int64_t b) {
    const int64_t D = c.D;
    const double* y = c.row(c.y, b);
    const double* yn = c.row(c.ynew, b);
    const double h = c.h[b];
    double sum = 0.0;
    for (int64_t i = 0; i <= D; ++i) {
        double acc = 0.0;
        for (int j = 0; j < 7; ++j) acc += dopri5_e(j) * c.stage(j, b)[i];
        const double err = h * acc;
        const double sc = p.atol + p.rtol * max_of(fabs(y[i]), fabs(yn[i]));
        const double r = err / sc;
        sum += r * r;
    }
    return sqrt(sum / static_cast<double>(D + 1));
}

// After stage 7 (k7 = f(ynew) in stage 6): accept or reject, the next step size, FSAL, and the
// failure rules (max_steps, step-size underflow, non-finite state).
EQFLOW_HD inline void dopri5_finish(const Chunk& c, const Params& p, int64_t b) {
    const int64_t S = c.S();
    double en = dopri5_error_norm(c, p, b);
    double* yn = c.row(c.ynew, b);
    double* k7 = c.stage(6, b);
    if (!(finite(en) && all_finite(yn, S) && all_finite(k7, S))) en = INFINITY;
    const double h = c.h[b];
    const bool last = (c.flags[b] & kLast) != 0;
    c.steps[b] += 1;
    if (en <= 1.0) {
        c.t[b] = last ? p.t1 : c.t[b] + h;
        double* y = c.row(c.y, b);
        double* k1 = c.stage(0, b);
        for (int64_t i = 0; i < S; ++i) {
            y[i] = yn[i];
            k1[i] = k7[i];  // first same as last
        }
        c.accepted[b] += 1;
        if (last) c.flags[b] |= kDone;
        const double factor =
            en == 0.0 ? kMaxFactor : clamp_to(kSafety * pow(en, -0.2), kMinFactor, kMaxFactor);
        c.h[b] = h * factor;
    } else {
        c.rejected[b] += 1;
        const double factor =
            finite(en) ? clamp_to(kSafety * pow(en, -0.2), kMinFactor, 1.0) : kMinFactor;
        c.h[b] = h * factor;
    }
    if (!(c.flags[b] & kDone) &&
        (c.steps[b] >= p.max_steps || fabs(c.h[b]) < 1e-12 * max_of(1.0, p.span())))
        c.flags[b] |= kDone | kFailed;
}

// ---- fixed steps: classical RK4 and Euler -------------------------------------------------------

// Field input of stage s (RK4: 0..3, Euler: 0) of a step of size h: y, y + h/2 k1, y + h/2 k2,
// y + h k3 (the caller supplies the stage times t, t + h/2, t + h/2, t_end).
template <class F>
EQFLOW_HD inline void fixed_stage(const Chunk& c, int64_t b, int s, double h, F* x_out) {
    const double* y = c.row(c.y, b);
    const double* kp = s > 0 ? c.stage(s - 1, b) : nullptr;
    for (int64_t i = 0; i < c.D; ++i) {
        double value = y[i];
        if (s == 1 || s == 2) value = y[i] + 0.5 * h * kp[i];
        if (s == 3) value = y[i] + h * kp[i];
        x_out[i] = static_cast<F>(value);
    }
}

// y += h k1 (Euler) or y += h/6 (k1 + 2 k2 + 2 k3 + k4) (RK4), over all S components.
EQFLOW_HD inline void fixed_update(const Chunk& c, int64_t b, bool rk4, double h) {
    double* y = c.row(c.y, b);
    const double* k1 = c.stage(0, b);
    for (int64_t i = 0; i < c.S(); ++i) {
        if (!rk4) {
            y[i] += h * k1[i];
        } else {
            y[i] += h / 6.0 *
                    (k1[i] + 2.0 * c.stage(1, b)[i] + 2.0 * c.stage(2, b)[i] + c.stage(3, b)[i]);
        }
    }
}

// After the last fixed step: a non-finite state has failed.
EQFLOW_HD inline void fixed_check_end(const Chunk& c, int64_t b) {
    c.flags[b] |= kDone;
    if (!all_finite(c.row(c.y, b), c.S())) c.flags[b] |= kFailed;
}

}  // namespace eqflow::ode_step
