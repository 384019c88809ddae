// eqflow/ode.h: integration of a continuous normalizing flow's state (x, log-density) over time,
// with adaptive Dormand-Prince 5(4), fixed-step classical RK4 or Euler, forwards (t0 < t1:
// sampling) or backwards (t0 > t1: likelihood of given data).
//
// The field is a batched callback (x [B][D], t [B]) -> (v [B][D], div [B]); t is per sample,
// because every sample of a batch carries its own time and step size. The solver integrates, per
// sample, the ODE
//     dx/dt = v(x, t),   dI/dt = div v(x, t),   dL/dt = |v(x, t)|
// from t0 to t1 and reports x(t1), I = int_{t0}^{t1} div dt (so log q(x(t1)) = log q(x(t0)) - I,
// whatever the direction) and L = int |v| dt over the time actually travelled (the path length;
// non-negative in both directions).
//
// Adaptive stepping is per sample, so a sample's result does not depend on which other samples
// share its batch (the callback sees one row per active sample). The error norm is the RMS over
// the D coordinates AND the divergence integral I of the embedded 4th/5th-order difference,
// each scaled by atol + rtol * max(|y_old|, |y_new|) (Hairer, Norsett & Wanner, II.4). The path
// length rides along as a quadrature and is not part of the error norm. Step-size control: the
// standard safety factor 0.9, growth in [0.2, 10], first step from Hairer's starting algorithm.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "eqflow/export.h"

namespace eqflow {

enum class OdeMethod { dopri5, rk4, euler };

EQFLOW_API OdeMethod parse_ode_method(const std::string& name);  // "dopri5", "rk4", "euler"
EQFLOW_API const char* ode_method_name(OdeMethod method);

struct OdeOptions {
    OdeMethod method = OdeMethod::dopri5;
    double atol = 1e-4;  // docs/design.md section 6 default for sampling
    double rtol = 1e-4;
    int steps = 20;              // fixed-step methods: steps from t0 to t1
    int64_t max_steps = 100000;  // adaptive: accepted + rejected steps per sample before giving up
    double first_step = 0.0;     // adaptive: 0 picks one automatically
};

// Field callback: B rows; x [B][D], t [B] in; v [B][D] and div [B] out. `div` may be nullptr
// when the caller does not need it (then the divergence integral stays 0).
using OdeField =
    std::function<void(int64_t B, const double* x, const double* t, double* v, double* div)>;

struct OdeStats {
    int64_t function_evals = 0;  // batched calls of the field
    int64_t row_evals = 0;       // sample rows evaluated, over all calls
    int64_t accepted = 0;        // accepted steps, summed over samples
    int64_t rejected = 0;        // rejected steps, summed over samples
    int64_t failed = 0;          // samples that hit max_steps or a non-finite state
};

// Integrates B samples of dimension D from t0 to t1 in place. x [B][D] holds x(t0) on entry and
// x(t1) on return; div_integral [B] (nullable) receives I; path_length [B] (nullable) receives L.
// `need_div` false skips the divergence (cheaper fields). A sample whose state turns non-finite
// or that exhausts max_steps is marked failed: its outputs are NaN and it is counted in
// stats->failed (nullable); the solver itself never throws for it.
EQFLOW_API void ode_integrate(const OdeField& field, int64_t B, int64_t D, double* x, double t0,
                              double t1, const OdeOptions& options, double* div_integral,
                              double* path_length, OdeStats* stats = nullptr, bool need_div = true);

}  // namespace eqflow
