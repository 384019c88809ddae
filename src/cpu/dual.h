// src/cpu/dual.h: a forward-mode dual number (value + one tangent) for the CPU reference.
//
// The reference EGNN (src/cpu/egnn_cpu.cpp) templates its reverse pass on the scalar type of the
// activations; instantiated with Dual it is forward-over-reverse, which gives the second
// derivatives that the reverse mode of the exact divergence needs (docs/design.md section 4).
// Parameters stay plain double (their tangent is zero), so products with a weight cost two
// multiplications, not three. Only the operations that the reference uses are defined.
#pragma once

#include <cmath>

namespace eqflow::cpu {

struct Dual {
    double v = 0.0;  // value
    double d = 0.0;  // tangent

    Dual() = default;
    // Implicit from double: a constant (zero tangent), so that literals mix with duals.
    Dual(double value) : v(value) {}  // NOLINT(google-explicit-constructor)
    Dual(double value, double tangent) : v(value), d(tangent) {}

    Dual& operator+=(const Dual& b) {
        v += b.v;
        d += b.d;
        return *this;
    }
    Dual& operator-=(const Dual& b) {
        v -= b.v;
        d -= b.d;
        return *this;
    }
    Dual& operator/=(double b) {
        v /= b;
        d /= b;
        return *this;
    }
    Dual& operator*=(const Dual& b) {
        d = d * b.v + v * b.d;
        v *= b.v;
        return *this;
    }
};

inline Dual operator-(const Dual& a) {
    return Dual(-a.v, -a.d);
}
inline Dual operator+(const Dual& a, const Dual& b) {
    return Dual(a.v + b.v, a.d + b.d);
}
inline Dual operator-(const Dual& a, const Dual& b) {
    return Dual(a.v - b.v, a.d - b.d);
}
inline Dual operator*(const Dual& a, const Dual& b) {
    return Dual(a.v * b.v, a.d * b.v + a.v * b.d);
}
inline Dual operator*(double a, const Dual& b) {
    return Dual(a * b.v, a * b.d);
}
inline Dual operator*(const Dual& a, double b) {
    return Dual(a.v * b, a.d * b);
}
inline Dual operator/(const Dual& a, const Dual& b) {
    const double q = a.v / b.v;
    return Dual(q, (a.d - q * b.d) / b.v);
}
inline Dual operator/(const Dual& a, double b) {
    return Dual(a.v / b, a.d / b);
}
inline Dual operator/(double a, const Dual& b) {
    const double q = a / b.v;
    return Dual(q, -q * b.d / b.v);
}

inline Dual exp(const Dual& a) {
    const double e = std::exp(a.v);
    return Dual(e, e * a.d);
}
inline Dual tanh(const Dual& a) {
    const double t = std::tanh(a.v);
    return Dual(t, (1.0 - t * t) * a.d);
}
inline Dual sqrt(const Dual& a) {
    const double s = std::sqrt(a.v);
    return Dual(s, a.d / (2.0 * s));
}

}  // namespace eqflow::cpu
