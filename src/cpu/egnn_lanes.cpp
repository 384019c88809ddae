// The fast CPU backend's reverse mode of the EGNN's exact divergence: the reference's
// forward-over-reverse pass (src/cpu/egnn_reverse.h, the code the double reference runs with its
// Dual) instantiated with LaneDual, a dual number whose value and tangent are SIMD vectors of
// float, one direction per lane.
//
// div v = sum_q e_q^T J e_q, and the reverse pass of L_q = g e_q^T v run on duals whose x carries
// the tangent e_q returns g grad(e_q^T J e_q) in its tangent parts (egnn_cpu.cpp). The reference
// runs one dual pass per direction q; here lane l of a pass carries direction q0 + l: the input's
// tangent is e_{q0+l} in lane l, the upstream gradient's value g e_{q0+l} in lane l. The forward
// values are the same in every lane (computed W times, in one vector instruction each); the
// reverse pass's values and every tangent differ by lane. So W directions cost one pass of
// vector arithmetic instead of W passes of scalar double dual arithmetic: DW4's 8 directions are
// one pass with AVX2, LJ13's 39 are five.
//
// Precision: float throughout the pass, with the fast field's float parameters; the gradient's
// tangents accumulate per lane in float over about kFlushEdges edge terms (DW4: a chunk's 16 rows;
// LJ13: 2 rows; LJ55: one), then are summed over the lanes into the caller's double gradient.
// Tested against the double reference to float tolerances (tests/test_likelihood.cpp).
#include "cpu/egnn_lanes.h"

#include <algorithm>
#include <vector>

#include "cpu/egnn_reverse.h"
#include "cpu/simd_f32.h"

namespace eqflow::cpu {

namespace {

using simd::kLanes;
using simd::vf;

constexpr int64_t kFlushEdges = 1024;  // as in egnn_field_fast.cpp

inline vf splat(double s) {
    return simd::splat(static_cast<float>(s));
}

// value + tangent, each a vector of kLanes floats (one direction per lane).
struct LaneDual {
    vf v{};
    vf d{};

    LaneDual() = default;
    // Implicit from double or float: a constant in every lane (zero tangent), as Dual.
    LaneDual(double value) : v(splat(value)) {}       // NOLINT(google-explicit-constructor)
    LaneDual(float value) : v(simd::splat(value)) {}  // NOLINT(google-explicit-constructor)
    LaneDual(int value) : v(simd::splat(static_cast<float>(value))) {}  // NOLINT: `S r = 0`
    LaneDual(vf value, vf tangent) : v(value), d(tangent) {}

    LaneDual& operator+=(const LaneDual& b) {
        v += b.v;
        d += b.d;
        return *this;
    }
    LaneDual& operator-=(const LaneDual& b) {
        v -= b.v;
        d -= b.d;
        return *this;
    }
    LaneDual& operator/=(double b) {
        const vf s = splat(b);
        v /= s;
        d /= s;
        return *this;
    }
    LaneDual& operator*=(const LaneDual& b) {
        d = d * b.v + v * b.d;
        v *= b.v;
        return *this;
    }
};

inline LaneDual operator-(const LaneDual& a) {
    return LaneDual(-a.v, -a.d);
}
inline LaneDual operator+(const LaneDual& a, const LaneDual& b) {
    return LaneDual(a.v + b.v, a.d + b.d);
}
inline LaneDual operator-(const LaneDual& a, const LaneDual& b) {
    return LaneDual(a.v - b.v, a.d - b.d);
}
inline LaneDual operator*(const LaneDual& a, const LaneDual& b) {
    return LaneDual(a.v * b.v, a.d * b.v + a.v * b.d);
}
inline LaneDual operator*(double a, const LaneDual& b) {
    const vf s = splat(a);
    return LaneDual(s * b.v, s * b.d);
}
inline LaneDual operator*(const LaneDual& a, double b) {
    const vf s = splat(b);
    return LaneDual(a.v * s, a.d * s);
}
// A weight (float, the fast field's parameters) times a dual: one broadcast, no conversion.
inline LaneDual operator*(float a, const LaneDual& b) {
    const vf s = simd::splat(a);
    return LaneDual(s * b.v, s * b.d);
}
inline LaneDual operator*(const LaneDual& a, float b) {
    const vf s = simd::splat(b);
    return LaneDual(a.v * s, a.d * s);
}
inline LaneDual operator/(const LaneDual& a, const LaneDual& b) {
    const vf q = a.v / b.v;
    return LaneDual(q, (a.d - q * b.d) / b.v);
}
inline LaneDual operator/(const LaneDual& a, double b) {
    const vf s = splat(b);
    return LaneDual(a.v / s, a.d / s);
}
inline LaneDual operator/(double a, const LaneDual& b) {
    const vf q = splat(a) / b.v;
    return LaneDual(q, -q * b.d / b.v);
}

// sigmoid as one function (found before the template in egnn_reverse.h by argument-dependent
// lookup): the template's 1 / (1 + exp(-z)) through the quotient rule overflows in float where
// exp(-z) does (z below about -88: inf * tangent), this one does not (s' = s (1 - s)).
inline LaneDual sigmoid(const LaneDual& a) {
    const vf s = simd::vsigmoid(a.v);
    return LaneDual(s, s * (1.0f - s) * a.d);
}
inline LaneDual exp(const LaneDual& a) {
    const vf e = simd::vexp(a.v);
    return LaneDual(e, e * a.d);
}
inline LaneDual tanh(const LaneDual& a) {
    const vf t = simd::vtanh(a.v);
    return LaneDual(t, (1.0f - t * t) * a.d);
}
inline LaneDual sqrt(const LaneDual& a) {  // once per edge: a plain loop is enough
    vf s{};
    for (int l = 0; l < kLanes; ++l) s[l] = std::sqrt(a.v[l]);
    return LaneDual(s, a.d / (2.0f * s));
}

// The parameter gradient keeps only the tangents (the caller reads nothing else), as the
// reference's Dual outer products do.
struct LaneGrad {
    vf d{};
    LaneGrad& operator+=(const LaneDual& s) {
        d += s.d;
        return *this;
    }
};

// dW += y x^T, tangents only: (y x).d.
inline void ger_add(LaneGrad* dW, int64_t ld, int rows, int cols, const LaneDual* y,
                    const LaneDual* x) {
    for (int o = 0; o < rows; ++o) {
        LaneGrad* w = dW + o * ld;
        const LaneDual yo = y[o];
        for (int k = 0; k < cols; ++k) w[k].d += yo.v * x[k].d + yo.d * x[k].v;
    }
}
inline void ger_add(LaneGrad* dW, int64_t ld, int rows, int cols, const LaneDual* y,
                    const double* x) {
    for (int o = 0; o < rows; ++o) {
        LaneGrad* w = dW + o * ld;
        const vf yd = y[o].d;
        for (int k = 0; k < cols; ++k) w[k].d += yd * splat(x[k]);
    }
}

}  // namespace

void egnn_divergence_backward_lanes(const EgnnConfig& config, const EgnnOffsets& off,
                                    const float* params, int64_t rows, const float* x,
                                    const float* t, const float* g, double* grad, float* dL_dx) {
    const int nd = config.n_particles * config.dim;
    const int64_t P = egnn_parameter_count(config);
    std::vector<LaneDual> xs(static_cast<size_t>(nd)), dv(static_cast<size_t>(nd)),
        gx(static_cast<size_t>(nd));
    std::vector<LaneGrad> G(static_cast<size_t>(P));
    // The lanes' float gradient goes into the double one every kFlushEdges edge terms (a row's
    // n(n-1) L if more), as the fast field's own float accumulators do.
    const int64_t edges = static_cast<int64_t>(config.n_particles) * (config.n_particles - 1) *
                          std::max(config.layers, 1);
    const int64_t flush_rows = std::max<int64_t>(1, kFlushEdges / edges);
    auto flush = [&] {
        for (int64_t i = 0; i < P; ++i) {
            LaneGrad& gi = G[static_cast<size_t>(i)];
            double sum = 0.0;
            for (int l = 0; l < kLanes; ++l) sum += gi.d[l];
            grad[i] += sum;
            gi = LaneGrad{};
        }
    };
    for (int64_t b = 0; b < rows; ++b) {
        const float* xb = x + b * nd;
        float* gxb = dL_dx ? dL_dx + b * nd : nullptr;
        if (gxb) std::fill(gxb, gxb + nd, 0.0f);
        for (int q0 = 0; q0 < nd; q0 += kLanes) {
            // Lane l: direction q0 + l (lanes past nd carry nothing).
            for (int k = 0; k < nd; ++k) {
                vf tangent{}, seed{};
                const int l = k - q0;
                if (l >= 0 && l < kLanes) {
                    tangent[l] = 1.0f;
                    seed[l] = g[b];
                }
                xs[static_cast<size_t>(k)] = LaneDual(splat(xb[k]), tangent);
                dv[static_cast<size_t>(k)] = LaneDual(seed, vf{});
            }
            backward_one<LaneDual, LaneGrad, float>(config, off, params, xs.data(), t[b], dv.data(),
                                                    G.data(), gxb ? gx.data() : nullptr);
            if (gxb)
                for (int k = 0; k < nd; ++k) gxb[k] += simd::hsum(gx[static_cast<size_t>(k)].d);
        }
        if ((b + 1) % flush_rows == 0 || b + 1 == rows) flush();
    }
}

}  // namespace eqflow::cpu
