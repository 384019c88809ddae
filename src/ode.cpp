// ODE integration of (x, divergence integral, path length): see eqflow/ode.h.
#include "eqflow/ode.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "eqflow/error.h"
#include "ode_host.h"

namespace eqflow {

OdeMethod parse_ode_method(const std::string& name) {
    if (name == "dopri5") return OdeMethod::dopri5;
    if (name == "rk4") return OdeMethod::rk4;
    if (name == "euler") return OdeMethod::euler;
    EQFLOW_THROW("unknown ODE solver '" << name << "' (choose dopri5, rk4 or euler)");
}

const char* ode_method_name(OdeMethod method) {
    static const char* const kNames[] = {"dopri5", "rk4", "euler"};  // in the order of the enum
    return kNames[static_cast<int>(method)];
}

void ode_integrate(const OdeField& field, int64_t B, int64_t D, double* x, double t0, double t1,
                   const OdeOptions& options, double* div_integral, double* path_length,
                   OdeStats* stats, bool need_div) {
    EQFLOW_CHECK(B >= 0 && D > 0, "ode_integrate: bad sizes B = " << B << ", D = " << D);
    EQFLOW_CHECK(std::isfinite(t0) && std::isfinite(t1), "ode_integrate: non-finite time interval");
    ode_host::Driver<double>(field, B, D, options, t0, t1, need_div, stats)
        .run(x, div_integral, path_length);
}

}  // namespace eqflow
