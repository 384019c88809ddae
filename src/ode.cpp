// ODE integration of (x, divergence integral, path length): see eqflow/ode.h.
#include "eqflow/ode.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "eqflow/error.h"
#include "common/ode_step.h"

namespace eqflow {

OdeMethod parse_ode_method(const std::string& name) {
    if (name == "dopri5") return OdeMethod::dopri5;
    if (name == "rk4") return OdeMethod::rk4;
    if (name == "euler") return OdeMethod::euler;
    EQFLOW_THROW("unknown ODE solver '" << name << "' (choose dopri5, rk4 or euler)");
}

const char* ode_method_name(OdeMethod method) {
    switch (method) {
        case OdeMethod::dopri5:
            return "dopri5";
        case OdeMethod::rk4:
            return "rk4";
        case OdeMethod::euler:
            return "euler";
    }
    return "?";
}

namespace {

// The augmented state of one sample: S = D + 2 numbers, [x (D), I, L].
struct Evaluator {
    const OdeField& field;
    int64_t D;
    bool need_div;
    OdeStats* stats;
    std::vector<double> xb, tb, vb, db;  // gathered rows

    // k[r][S] = f(y[r][S], t[r]) for the rows listed in `rows` (indices into y / t / k).
    void operator()(const std::vector<int64_t>& rows, const double* y, const double* t, double* k) {
        const int64_t S = D + 2;
        const int64_t m = static_cast<int64_t>(rows.size());
        if (m == 0) return;
        xb.resize(static_cast<size_t>(m * D));
        tb.resize(static_cast<size_t>(m));
        vb.resize(static_cast<size_t>(m * D));
        db.assign(static_cast<size_t>(m), 0.0);
        for (int64_t r = 0; r < m; ++r) {
            const int64_t b = rows[static_cast<size_t>(r)];
            std::copy(y + b * S, y + b * S + D, xb.begin() + r * D);
            tb[static_cast<size_t>(r)] = t[b];
        }
        field(m, xb.data(), tb.data(), vb.data(), need_div ? db.data() : nullptr);
        if (stats) {
            stats->function_evals += 1;
            stats->row_evals += m;
        }
        for (int64_t r = 0; r < m; ++r) {
            const int64_t b = rows[static_cast<size_t>(r)];
            double* kb = k + b * S;
            double norm2 = 0.0;
            for (int64_t i = 0; i < D; ++i) {
                const double v = vb[static_cast<size_t>(r * D + i)];
                kb[i] = v;
                norm2 += v * v;
            }
            kb[D] = need_div ? db[static_cast<size_t>(r)] : 0.0;
            kb[D + 1] = std::sqrt(norm2);
        }
    }
};

bool all_finite(const double* y, int64_t S) {
    for (int64_t i = 0; i < S; ++i)
        if (!std::isfinite(y[i])) return false;
    return true;
}

void write_outputs(int64_t B, int64_t D, const std::vector<double>& y,
                   const std::vector<char>& failed, double* x, double* div_integral,
                   double* path_length, OdeStats* stats) {
    const int64_t S = D + 2;
    const double nan = std::numeric_limits<double>::quiet_NaN();
    for (int64_t b = 0; b < B; ++b) {
        const bool bad = failed[static_cast<size_t>(b)] != 0;
        for (int64_t i = 0; i < D; ++i)
            x[b * D + i] = bad ? nan : y[static_cast<size_t>(b * S + i)];
        if (div_integral) div_integral[b] = bad ? nan : y[static_cast<size_t>(b * S + D)];
        if (path_length)
            path_length[b] = bad ? nan : std::fabs(y[static_cast<size_t>(b * S + D + 1)]);
        if (bad && stats) stats->failed += 1;
    }
}

// Classical RK4 or Euler with `steps` equal steps; all samples move together.
void integrate_fixed(Evaluator& eval, int64_t B, int64_t D, std::vector<double>& y, double t0,
                     double t1, const OdeOptions& opt, std::vector<char>& failed) {
    const int64_t S = D + 2;
    EQFLOW_CHECK(opt.steps > 0, "fixed-step ODE solver needs steps > 0, got " << opt.steps);
    const double h = (t1 - t0) / opt.steps;
    std::vector<int64_t> rows(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) rows[static_cast<size_t>(b)] = b;
    const size_t n = static_cast<size_t>(B * S);
    std::vector<double> k1(n), k2, k3, k4, ys, ts(static_cast<size_t>(B));
    if (opt.method == OdeMethod::rk4) {
        k2.resize(n);
        k3.resize(n);
        k4.resize(n);
        ys.resize(n);
    }
    for (int step = 0; step < opt.steps; ++step) {
        // t computed from the step index, not accumulated, so the last step lands on t1.
        const double t = t0 + (t1 - t0) * step / opt.steps;
        std::fill(ts.begin(), ts.end(), t);
        eval(rows, y.data(), ts.data(), k1.data());
        if (opt.method == OdeMethod::euler) {
            for (size_t i = 0; i < n; ++i) y[i] += h * k1[i];
            continue;
        }
        std::fill(ts.begin(), ts.end(), t + 0.5 * h);
        for (size_t i = 0; i < n; ++i) ys[i] = y[i] + 0.5 * h * k1[i];
        eval(rows, ys.data(), ts.data(), k2.data());
        for (size_t i = 0; i < n; ++i) ys[i] = y[i] + 0.5 * h * k2[i];
        eval(rows, ys.data(), ts.data(), k3.data());
        const double t_end = t0 + (t1 - t0) * (step + 1) / opt.steps;
        std::fill(ts.begin(), ts.end(), t_end);
        for (size_t i = 0; i < n; ++i) ys[i] = y[i] + h * k3[i];
        eval(rows, ys.data(), ts.data(), k4.data());
        for (size_t i = 0; i < n; ++i)
            y[i] += h / 6.0 * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i]);
    }
    for (int64_t b = 0; b < B; ++b)
        if (!all_finite(y.data() + b * S, S)) failed[static_cast<size_t>(b)] = 1;
}

// Dormand & Prince (1980) 5(4): the tableau and the controller constants are those of
// src/common/ode_step.h, shared with the device integrator. The 5th-order solution propagates (local
// extrapolation) and its last stage is the first of the next step (FSAL).
using ode_step::dopri5_a;
using ode_step::dopri5_c;
using ode_step::dopri5_e;
using ode_step::kMaxFactor;
using ode_step::kMinFactor;
using ode_step::kSafety;

// RMS over the D coordinates and the divergence integral (the log-density), scaled per
// component by atol + rtol * max(|a|, |b|).
double error_norm(const double* e, const double* a, const double* b, int64_t D, double atol,
                  double rtol) {
    double sum = 0.0;
    for (int64_t i = 0; i <= D; ++i) {
        const double sc = atol + rtol * std::max(std::fabs(a[i]), std::fabs(b[i]));
        const double r = e[i] / sc;
        sum += r * r;
    }
    return std::sqrt(sum / static_cast<double>(D + 1));
}

void integrate_dopri5(Evaluator& eval, int64_t B, int64_t D, std::vector<double>& y, double t0,
                      double t1, const OdeOptions& opt, std::vector<char>& failed,
                      OdeStats* stats) {
    const int64_t S = D + 2;
    const size_t n = static_cast<size_t>(B * S);
    const double dir = t1 > t0 ? 1.0 : -1.0;
    const double span = std::fabs(t1 - t0);
    EQFLOW_CHECK(opt.atol > 0 && opt.rtol >= 0, "ODE tolerances must be atol > 0, rtol >= 0");
    std::vector<double> k[7];
    for (auto& ki : k) ki.assign(n, 0.0);
    std::vector<double> ys(n), ynew(n), err(static_cast<size_t>(S));
    std::vector<double> t(static_cast<size_t>(B), t0), ts(static_cast<size_t>(B)),
        h(static_cast<size_t>(B));
    std::vector<int64_t> steps(static_cast<size_t>(B), 0);
    std::vector<char> done(static_cast<size_t>(B), 0), last(static_cast<size_t>(B), 0);
    std::vector<int64_t> rows(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) rows[static_cast<size_t>(b)] = b;

    // k1 at the start, then the first step size: Hairer, Norsett & Wanner, II.4 (starting step).
    eval(rows, y.data(), t.data(), k[0].data());
    if (opt.first_step > 0) {
        std::fill(h.begin(), h.end(), std::min(opt.first_step, span) * dir);
    } else {
        std::vector<double> h0(static_cast<size_t>(B));
        for (int64_t b = 0; b < B; ++b) {
            const double* yb = y.data() + b * S;
            const double* kb = k[0].data() + b * S;
            double d0 = 0, d1 = 0;
            for (int64_t i = 0; i <= D; ++i) {
                const double sc = opt.atol + opt.rtol * std::fabs(yb[i]);
                d0 += (yb[i] / sc) * (yb[i] / sc);
                d1 += (kb[i] / sc) * (kb[i] / sc);
            }
            d0 = std::sqrt(d0 / (D + 1));
            d1 = std::sqrt(d1 / (D + 1));
            double hb = (d0 < 1e-5 || d1 < 1e-5) ? 1e-6 : 0.01 * d0 / d1;
            if (!std::isfinite(hb)) hb = 1e-6;
            hb = std::min(hb, span);
            h0[static_cast<size_t>(b)] = hb;
            ts[static_cast<size_t>(b)] = t0 + dir * hb;
            for (int64_t i = 0; i < S; ++i)
                ys[static_cast<size_t>(b * S + i)] = yb[i] + dir * hb * kb[i];
        }
        eval(rows, ys.data(), ts.data(), k[1].data());
        for (int64_t b = 0; b < B; ++b) {
            const double* yb = y.data() + b * S;
            const double* k0 = k[0].data() + b * S;
            const double* k1 = k[1].data() + b * S;
            const double hb = h0[static_cast<size_t>(b)];
            double d1 = 0, d2 = 0;
            for (int64_t i = 0; i <= D; ++i) {
                const double sc = opt.atol + opt.rtol * std::fabs(yb[i]);
                d1 += (k0[i] / sc) * (k0[i] / sc);
                d2 += ((k1[i] - k0[i]) / sc) * ((k1[i] - k0[i]) / sc);
            }
            d1 = std::sqrt(d1 / (D + 1));
            d2 = std::sqrt(d2 / (D + 1)) / hb;
            const double m = std::max(d1, d2);
            double h1 = m <= 1e-15 ? std::max(1e-6, hb * 1e-3) : std::pow(0.01 / m, 1.0 / 5.0);
            double hs = std::min(100.0 * hb, h1);
            if (!std::isfinite(hs) || hs <= 0) hs = 1e-6;
            h[static_cast<size_t>(b)] = dir * std::min(hs, span);
        }
    }
    for (int64_t b = 0; b < B; ++b)
        if (!all_finite(k[0].data() + b * S, S))
            failed[static_cast<size_t>(b)] = done[static_cast<size_t>(b)] = 1;

    std::vector<int64_t> active;
    for (;;) {
        active.clear();
        for (int64_t b = 0; b < B; ++b)
            if (!done[static_cast<size_t>(b)]) active.push_back(b);
        if (active.empty()) break;
        // Clip the step so that the last one lands exactly on t1.
        for (int64_t b : active) {
            const size_t bs = static_cast<size_t>(b);
            const double remaining = t1 - t[bs];
            last[bs] = std::fabs(h[bs]) >= std::fabs(remaining);
            if (last[bs]) h[bs] = remaining;
        }
        for (int s = 1; s < 7; ++s) {
            for (int64_t b : active) {
                const size_t bs = static_cast<size_t>(b);
                const double hb = h[bs];
                ts[bs] = s == 6 ? (last[bs] ? t1 : t[bs] + hb) : t[bs] + dopri5_c(s) * hb;
                double* out = (s == 6 ? ynew.data() : ys.data()) + b * S;
                const double* yb = y.data() + b * S;
                for (int64_t i = 0; i < S; ++i) {
                    double acc = 0.0;
                    for (int j = 0; j < s; ++j)
                        acc += dopri5_a(s, j) * k[j][static_cast<size_t>(b * S + i)];
                    out[i] = yb[i] + hb * acc;
                }
            }
            eval(active, s == 6 ? ynew.data() : ys.data(), ts.data(), k[s].data());
        }
        for (int64_t b : active) {
            const size_t bs = static_cast<size_t>(b);
            const double hb = h[bs];
            for (int64_t i = 0; i < S; ++i) {
                double acc = 0.0;
                for (int j = 0; j < 7; ++j)
                    acc += dopri5_e(j) * k[j][static_cast<size_t>(b * S + i)];
                err[static_cast<size_t>(i)] = hb * acc;
            }
            const double* yb = y.data() + b * S;
            double* yn = ynew.data() + b * S;
            double en = error_norm(err.data(), yb, yn, D, opt.atol, opt.rtol);
            const bool finite =
                std::isfinite(en) && all_finite(yn, S) && all_finite(k[6].data() + b * S, S);
            if (!finite) en = std::numeric_limits<double>::infinity();
            steps[bs] += 1;
            if (en <= 1.0) {
                t[bs] = last[bs] ? t1 : t[bs] + hb;
                std::copy(yn, yn + S, y.data() + b * S);
                std::copy(k[6].begin() + b * S, k[6].begin() + (b + 1) * S,
                          k[0].begin() + b * S);  // FSAL
                if (stats) stats->accepted += 1;
                if (last[bs]) done[bs] = 1;
                const double factor =
                    en == 0.0 ? kMaxFactor
                              : std::clamp(kSafety * std::pow(en, -0.2), kMinFactor, kMaxFactor);
                h[bs] = hb * factor;
            } else {
                if (stats) stats->rejected += 1;
                const double factor =
                    std::isfinite(en) ? std::clamp(kSafety * std::pow(en, -0.2), kMinFactor, 1.0)
                                      : kMinFactor;
                h[bs] = hb * factor;
            }
            if (!done[bs] &&
                (steps[bs] >= opt.max_steps || std::fabs(h[bs]) < 1e-12 * std::max(1.0, span))) {
                failed[bs] = 1;
                done[bs] = 1;
            }
        }
    }
}

}  // namespace

void ode_integrate(const OdeField& field, int64_t B, int64_t D, double* x, double t0, double t1,
                   const OdeOptions& options, double* div_integral, double* path_length,
                   OdeStats* stats, bool need_div) {
    EQFLOW_CHECK(B >= 0 && D > 0, "ode_integrate: bad sizes B = " << B << ", D = " << D);
    EQFLOW_CHECK(std::isfinite(t0) && std::isfinite(t1), "ode_integrate: non-finite time interval");
    const int64_t S = D + 2;
    std::vector<double> y(static_cast<size_t>(B * S), 0.0);
    for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < D; ++i) y[static_cast<size_t>(b * S + i)] = x[b * D + i];
    std::vector<char> failed(static_cast<size_t>(B), 0);
    if (B > 0 && t0 != t1) {
        Evaluator eval{field, D, need_div, stats, {}, {}, {}, {}};
        if (options.method == OdeMethod::dopri5) {
            integrate_dopri5(eval, B, D, y, t0, t1, options, failed, stats);
        } else {
            integrate_fixed(eval, B, D, y, t0, t1, options, failed);
        }
    }
    write_outputs(B, D, y, failed, x, div_integral, path_length, stats);
}

}  // namespace eqflow
