// src/ode_host.h: the host ODE solver behind ode_integrate (eqflow/ode.h). It runs the per-sample
// arithmetic of src/common/ode_step.h (the functions the device integrator's kernels run) in host
// loops, in the order of the device driver (src/ode_gpu.cpp): evaluate the field on the compact
// list of samples still integrating, update them, drop the finished ones. F is the precision of
// the field's staged inputs: double for ode_integrate; float reproduces what the device sees
// (tests/test_ode_step.cpp). Internal header.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "common/ode_step.h"
#include "eqflow/error.h"
#include "eqflow/ode.h"

namespace eqflow::ode_host {

// The per-sample solver parameters of an integration from t0 to t1 (both drivers).
inline ode_step::Params params_of(const OdeOptions& o, double t0, double t1) {
    ode_step::Params p;
    p.t0 = t0;
    p.t1 = t1;
    p.atol = o.atol;
    p.rtol = o.rtol;
    p.first_step = o.first_step;
    p.max_steps = o.max_steps;
    return p;
}

// One sample's outputs from its final state y [D + 2] and flags (this driver's and the device
// driver's): x [D], the divergence integral and the path length (nullable), all NaN when it
// failed; its step counts and failure go into stats (nullable).
inline void collect_sample(const double* y, int64_t D, int flags, int64_t accepted,
                           int64_t rejected, double* x, double* div_integral, double* path_length,
                           OdeStats* stats) {
    const bool bad = (flags & ode_step::kFailed) != 0;
    const double nan = std::numeric_limits<double>::quiet_NaN();
    for (int64_t i = 0; i < D; ++i) x[i] = bad ? nan : y[i];
    if (div_integral) *div_integral = bad ? nan : y[D];
    if (path_length) *path_length = bad ? nan : std::fabs(y[D + 1]);
    if (stats) {
        stats->accepted += accepted;
        stats->rejected += rejected;
        stats->failed += bad ? 1 : 0;
    }
}

template <class F>
class Driver {
  public:
    Driver(const OdeField& field, int64_t B, int64_t D, const OdeOptions& o, double t0, double t1,
           bool need_div, OdeStats* stats)
        : field_(field), B_(B), o_(o), need_div_(need_div), stats_(stats) {
        const int64_t S = D + 2;
        const int stages = o.method == OdeMethod::dopri5 ? 7 : o.method == OdeMethod::rk4 ? 4 : 1;
        y_.assign(static_cast<size_t>(B * S), 0.0);
        if (o.method == OdeMethod::dopri5) ynew_.assign(static_cast<size_t>(B * S), 0.0);
        k_.assign(static_cast<size_t>(stages * B * S), 0.0);
        t_.assign(static_cast<size_t>(B), 0.0);
        h_.assign(static_cast<size_t>(B), 0.0);
        steps_.assign(static_cast<size_t>(B), 0);
        acc_.assign(static_cast<size_t>(B), 0);
        rej_.assign(static_cast<size_t>(B), 0);
        flags_.assign(static_cast<size_t>(B), 0);
        xf_.assign(static_cast<size_t>(B * D), F(0));
        tf_.assign(static_cast<size_t>(B), F(0));
        c_ = ode_step::Chunk{B,           D,           y_.data(),    ynew_.data(),
                             k_.data(),   t_.data(),   h_.data(),    steps_.data(),
                             acc_.data(), rej_.data(), flags_.data()};
        p_ = params_of(o, t0, t1);
    }

    // x [B][D] in: x(t0); out: x(t1), with the divergence integral and path length (nullable).
    void run(double* x, double* div_integral, double* path_length) {
        const int64_t D = c_.D, S = D + 2;
        for (int64_t b = 0; b < B_; ++b) ode_step::init_sample(c_, p_, b, x + b * D);
        if (B_ > 0 && p_.t0 != p_.t1) {
            for (int64_t b = 0; b < B_; ++b) idx_.push_back(b);
            if (o_.method == OdeMethod::dopri5) {
                dopri5();
            } else {
                fixed();
            }
        }
        for (int64_t b = 0; b < B_; ++b) {
            const size_t bs = static_cast<size_t>(b);
            collect_sample(y_.data() + b * S, D, flags_[bs], acc_[bs], rej_[bs], x + b * D,
                           div_integral ? div_integral + b : nullptr,
                           path_length ? path_length + b : nullptr, stats_);
        }
    }

  private:
    void dopri5() {
        EQFLOW_CHECK(o_.atol > 0 && o_.rtol >= 0, "ODE tolerances must be atol > 0, rtol >= 0");
        for (size_t r = 0; r < idx_.size(); ++r) gather(r);
        field(0);
        if (p_.first_step > 0) {
            for (int64_t b : idx_) ode_step::given_first_step(c_, p_, b);
        } else {
            for (size_t r = 0; r < idx_.size(); ++r)
                ode_step::hairer_trial(c_, p_, idx_[r], &xf_[r * c_.D], &tf_[r]);
            field(1);
            for (int64_t b : idx_) ode_step::hairer_finish(c_, p_, b);
        }
        for (int64_t b : idx_) ode_step::check_start(c_, b);
        compact();
        while (!idx_.empty()) {
            for (int s = 1; s < 7; ++s) {
                for (size_t r = 0; r < idx_.size(); ++r)
                    ode_step::dopri5_stage(c_, p_, idx_[r], s, &xf_[r * c_.D], &tf_[r]);
                field(s);
            }
            for (int64_t b : idx_) ode_step::dopri5_finish(c_, p_, b);
            compact();
        }
    }

    // All samples move together.
    void fixed() {
        EQFLOW_CHECK(o_.steps > 0, "fixed-step ODE solver needs steps > 0, got " << o_.steps);
        const bool rk4 = o_.method == OdeMethod::rk4;
        const double t0 = p_.t0, t1 = p_.t1, h = (t1 - t0) / o_.steps;
        for (int step = 0; step < o_.steps; ++step) {
            // Stage times from the step index, not accumulated, so the last step lands on t1.
            const double t = t0 + (t1 - t0) * step / o_.steps;
            const double t_end = t0 + (t1 - t0) * (step + 1) / o_.steps;
            const double times[4] = {t, t + 0.5 * h, t + 0.5 * h, t_end};
            for (int s = 0; s < (rk4 ? 4 : 1); ++s) {
                for (size_t r = 0; r < idx_.size(); ++r) {
                    ode_step::fixed_stage(c_, idx_[r], s, h, &xf_[r * c_.D]);
                    tf_[r] = static_cast<F>(times[s]);
                }
                field(s);
            }
            for (int64_t b : idx_) ode_step::fixed_update(c_, b, rk4, h);
        }
        for (int64_t b : idx_) ode_step::fixed_check_end(c_, b);
    }

    void gather(size_t r) {
        const double* y = c_.row(c_.y, idx_[r]);
        for (int64_t i = 0; i < c_.D; ++i) xf_[r * c_.D + i] = static_cast<F>(y[i]);
        tf_[r] = static_cast<F>(c_.t[idx_[r]]);
    }

    // The field on the m staged rows, then stage `stage` of their samples.
    void field(int stage) {
        const int64_t m = static_cast<int64_t>(idx_.size()), D = c_.D;
        if (m == 0) return;
        x_.assign(xf_.begin(), xf_.begin() + m * D);
        tt_.assign(tf_.begin(), tf_.begin() + m);
        v_.resize(static_cast<size_t>(m * D));
        div_.assign(static_cast<size_t>(m), 0.0);
        field_(m, x_.data(), tt_.data(), v_.data(), need_div_ ? div_.data() : nullptr);
        if (stats_) {
            stats_->function_evals += 1;
            stats_->row_evals += m;
        }
        vf_.resize(static_cast<size_t>(D));
        for (int64_t r = 0; r < m; ++r) {
            for (int64_t i = 0; i < D; ++i)
                vf_[static_cast<size_t>(i)] = static_cast<F>(v_[static_cast<size_t>(r * D + i)]);
            ode_step::store_derivative(D, vf_.data(), static_cast<F>(div_[static_cast<size_t>(r)]),
                                       c_.stage(stage, idx_[static_cast<size_t>(r)]));
        }
    }

    void compact() {
        idx_.clear();
        for (int64_t b = 0; b < B_; ++b)
            if (!(flags_[static_cast<size_t>(b)] & ode_step::kDone)) idx_.push_back(b);
    }

    const OdeField& field_;
    int64_t B_;
    OdeOptions o_;
    bool need_div_;
    OdeStats* stats_;
    ode_step::Chunk c_;
    ode_step::Params p_;
    std::vector<double> y_, ynew_, k_, t_, h_;
    std::vector<int64_t> steps_, acc_, rej_;
    std::vector<int> flags_;
    std::vector<F> xf_, tf_, vf_;
    std::vector<double> x_, tt_, v_, div_;  // the callback's double rows
    std::vector<int64_t> idx_;
};

}  // namespace eqflow::ode_host
