// tests/linear_ode.h: the linear ODE with a closed form that the ODE tests integrate.
//   v(x, t) = (alpha + beta t) x + omega J x, J rotating each consecutive pair of coordinates by
//   +90 degrees (D even). Closed form: x(t) = exp(alpha t + beta t^2 / 2) R(omega t) x(0);
//   div v = D (alpha + beta t), so I = D [alpha t + beta t^2 / 2] between the end points.
// The fields themselves (in double, or float32-rounded like the GPU's) are the tests' own.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace eqflow::test {

struct LinearOde {
    double alpha = 0.3, beta = -0.8, omega = 1.7;
    int64_t D = 6;

    double log_scale(double t) const { return alpha * t + 0.5 * beta * t * t; }
    // Exact x(t1) from x(t0).
    std::vector<double> solve(const std::vector<double>& x, double t0, double t1) const {
        const double g = std::exp(log_scale(t1) - log_scale(t0));
        const double c = std::cos(omega * (t1 - t0)), s = std::sin(omega * (t1 - t0));
        std::vector<double> out(x.size());
        for (size_t k = 0; k < x.size(); k += 2) {
            out[k] = g * (c * x[k] - s * x[k + 1]);
            out[k + 1] = g * (s * x[k] + c * x[k + 1]);
        }
        return out;
    }
    double div_integral(double t0, double t1) const {
        return static_cast<double>(D) * (log_scale(t1) - log_scale(t0));
    }
};

}  // namespace eqflow::test
