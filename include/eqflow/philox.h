// eqflow/philox.h: the counter-based random generator Philox-4x32-10 (Salmon, Moraes, Dror &
// Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011), usable on the host and inside
// CUDA kernels, with uniform and normal draws that are bit-identical on both sides.
//
// A draw is a pure function of (seed, stream, counter): key = seed, counter = {counter, stream}
// as two 64-bit halves. One block gives four 32-bit words. A job that gives each sample its own
// stream id (for example the sample index) draws the same numbers on the CPU and on the GPU,
// whatever the thread layout.
//
// Bit-identical normals: Box-Muller needs log, sqrt, sin and cos. sqrt and the four basic
// operations are correctly rounded (IEEE 754) on both sides, but libm's and CUDA's log/sin/cos
// may differ in the last bit. So the transcendental functions below are written out of basic
// operations only (range reduction + fixed polynomials), in one order, with explicit
// round-to-nearest intrinsics in device code so that nvcc cannot contract a*b+c into an FMA.
// Host code must likewise not contract: eqflow builds with -ffp-contract=off, and GCC never
// contracts without -mfma. Accuracy of det_log / det_sincos_2pi: a few ulp, far below what any
// sampling job can notice.
#pragma once

#include <cstdint>
#include <cstring>

#include "eqflow/export.h"

namespace eqflow {

struct PhiloxBlock {
    uint32_t v[4];
};

namespace philox_detail {

constexpr uint32_t kM0 = 0xD2511F53u;
constexpr uint32_t kM1 = 0xCD9E8D57u;
constexpr uint32_t kW0 = 0x9E3779B9u;
constexpr uint32_t kW1 = 0xBB67AE85u;

EQFLOW_HD inline uint32_t mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
    const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
    *hi = static_cast<uint32_t>(p >> 32);
    return static_cast<uint32_t>(p);
}

// Basic operations with one rounding each, in every compiler.
#if defined(__CUDA_ARCH__)
__device__ inline double mul(double a, double b) {
    return __dmul_rn(a, b);
}
__device__ inline double add(double a, double b) {
    return __dadd_rn(a, b);
}
__device__ inline double sub(double a, double b) {
    return __dsub_rn(a, b);
}
__device__ inline double div(double a, double b) {
    return __ddiv_rn(a, b);
}
__device__ inline double sqrt_rn(double a) {
    return __dsqrt_rn(a);
}
__device__ inline uint64_t bits(double x) {
    return static_cast<uint64_t>(__double_as_longlong(x));
}
__device__ inline double from_bits(uint64_t b) {
    return __longlong_as_double(static_cast<long long>(b));
}
#else
inline double mul(double a, double b) {
    return a * b;
}
inline double add(double a, double b) {
    return a + b;
}
inline double sub(double a, double b) {
    return a - b;
}
inline double div(double a, double b) {
    return a / b;
}
inline double sqrt_rn(double a) {
    return __builtin_sqrt(a);
}
inline uint64_t bits(double x) {
    uint64_t b;
    std::memcpy(&b, &x, sizeof b);
    return b;
}
inline double from_bits(uint64_t b) {
    double x;
    std::memcpy(&x, &b, sizeof x);
    return x;
}
#endif

}  // namespace philox_detail

// The raw generator: 10 rounds, key bumped between rounds.
EQFLOW_HD inline PhiloxBlock philox4x32_10(PhiloxBlock ctr, uint32_t key0, uint32_t key1) {
    using namespace philox_detail;
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            key0 += kW0;
            key1 += kW1;
        }
        uint32_t hi0, hi1;
        const uint32_t lo0 = mulhilo(kM0, ctr.v[0], &hi0);
        const uint32_t lo1 = mulhilo(kM1, ctr.v[2], &hi1);
        ctr = PhiloxBlock{{hi1 ^ ctr.v[1] ^ key0, lo1, hi0 ^ ctr.v[3] ^ key1, lo0}};
    }
    return ctr;
}

// The block at (seed, stream, counter).
EQFLOW_HD inline PhiloxBlock philox_block(uint64_t seed, uint64_t stream, uint64_t counter) {
    const PhiloxBlock ctr{{static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32),
                           static_cast<uint32_t>(stream), static_cast<uint32_t>(stream >> 32)}};
    return philox4x32_10(ctr, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Uniform double in the open interval (0, 1) from 53 random bits: (k + 1/2) / 2^53.
EQFLOW_HD inline double uniform_from_bits(uint32_t a, uint32_t b) {
    const uint64_t k = (static_cast<uint64_t>(a >> 5) << 26) | static_cast<uint64_t>(b >> 6);
    return (static_cast<double>(k) + 0.5) * (1.0 / 9007199254740992.0);
}

// Natural logarithm of x > 0 (normal numbers), from basic operations only.
EQFLOW_HD inline double det_log(double x) {
    using namespace philox_detail;
    const uint64_t b = bits(x);
    int e = static_cast<int>((b >> 52) & 0x7ff) - 1023;
    double m = from_bits((b & 0x000fffffffffffffull) | 0x3ff0000000000000ull);  // m in [1, 2)
    if (m > 1.4142135623730951) {  // m in [sqrt(1/2), sqrt(2)) keeps the series short
        m = mul(m, 0.5);
        e += 1;
    }
    // log m = 2 atanh(s), s = (m-1)/(m+1), |s| <= 0.1716: 2 s (1 + z/3 + z^2/5 + ...), z = s^2.
    const double s = div(sub(m, 1.0), add(m, 1.0));
    const double z = mul(s, s);
    double p = 1.0 / 25.0;
    p = add(mul(p, z), 1.0 / 23.0);
    p = add(mul(p, z), 1.0 / 21.0);
    p = add(mul(p, z), 1.0 / 19.0);
    p = add(mul(p, z), 1.0 / 17.0);
    p = add(mul(p, z), 1.0 / 15.0);
    p = add(mul(p, z), 1.0 / 13.0);
    p = add(mul(p, z), 1.0 / 11.0);
    p = add(mul(p, z), 1.0 / 9.0);
    p = add(mul(p, z), 1.0 / 7.0);
    p = add(mul(p, z), 1.0 / 5.0);
    p = add(mul(p, z), 1.0 / 3.0);
    const double log_m = mul(mul(2.0, s), add(mul(p, z), 1.0));
    // ln 2 split so that e * kLn2Hi is exact for |e| < 2^11 (fdlibm's split).
    const double kLn2Hi = 6.93147180369123816490e-01;
    const double kLn2Lo = 1.90821492927058770002e-10;
    const double de = static_cast<double>(e);
    return add(mul(de, kLn2Hi), add(mul(de, kLn2Lo), log_m));
}

// sin and cos of 2*pi*u for u in [0, 1), from basic operations only.
EQFLOW_HD inline void det_sincos_2pi(double u, double* sin_out, double* cos_out) {
    using namespace philox_detail;
    const double y = mul(u, 8.0);  // exact
    int k = static_cast<int>(y);   // octant 0..7
    if (k > 7) k = 7;
    const double f = sub(y, static_cast<double>(k));  // exact, in [0, 1)
    const double g = (k & 1) ? sub(1.0, f) : f;
    const double kPi4 = 0.78539816339744830962;
    const double t = mul(g, kPi4);  // phi in [0, pi/4]
    const double t2 = mul(t, t);
    // Taylor series; the first omitted terms are below 1e-19 on [0, pi/4].
    double ps = -1.0 / 121645100408832000.0;         // -1/19!
    ps = add(mul(ps, t2), 1.0 / 355687428096000.0);  //  1/17!
    ps = add(mul(ps, t2), -1.0 / 1307674368000.0);   // -1/15!
    ps = add(mul(ps, t2), 1.0 / 6227020800.0);       //  1/13!
    ps = add(mul(ps, t2), -1.0 / 39916800.0);        // -1/11!
    ps = add(mul(ps, t2), 1.0 / 362880.0);           //  1/9!
    ps = add(mul(ps, t2), -1.0 / 5040.0);            // -1/7!
    ps = add(mul(ps, t2), 1.0 / 120.0);              //  1/5!
    ps = add(mul(ps, t2), -1.0 / 6.0);               // -1/3!
    const double s = add(t, mul(mul(ps, t2), t));
    double pc = 1.0 / 6402373705728000.0;            //  1/18!
    pc = add(mul(pc, t2), -1.0 / 20922789888000.0);  // -1/16!
    pc = add(mul(pc, t2), 1.0 / 87178291200.0);      //  1/14!
    pc = add(mul(pc, t2), -1.0 / 479001600.0);       // -1/12!
    pc = add(mul(pc, t2), 1.0 / 3628800.0);          //  1/10!
    pc = add(mul(pc, t2), -1.0 / 40320.0);           // -1/8!
    pc = add(mul(pc, t2), 1.0 / 720.0);              //  1/6!
    pc = add(mul(pc, t2), -1.0 / 24.0);              // -1/4!
    pc = add(mul(pc, t2), 0.5);                      //  1/2!
    const double c = sub(1.0, mul(pc, t2));
    // Angle = k*pi/4 + f*pi/4; odd octants measure phi from the next multiple of pi/4.
    double sv, cv;
    switch (k) {
        case 0:
            sv = s;
            cv = c;
            break;
        case 1:
            sv = c;
            cv = s;
            break;
        case 2:
            sv = c;
            cv = -s;
            break;
        case 3:
            sv = s;
            cv = -c;
            break;
        case 4:
            sv = -s;
            cv = -c;
            break;
        case 5:
            sv = -c;
            cv = -s;
            break;
        case 6:
            sv = -c;
            cv = s;
            break;
        default:
            sv = -s;
            cv = c;
            break;
    }
    *sin_out = sv;
    *cos_out = cv;
}

// Two independent standard normals from one Philox block (Box-Muller).
EQFLOW_HD inline void normal_pair_from_block(PhiloxBlock b, double* z0, double* z1) {
    using namespace philox_detail;
    const double u1 = uniform_from_bits(b.v[0], b.v[1]);
    const double u2 = uniform_from_bits(b.v[2], b.v[3]);
    const double r = sqrt_rn(mul(-2.0, det_log(u1)));
    double sn, cs;
    det_sincos_2pi(u2, &sn, &cs);
    *z0 = mul(r, cs);
    *z1 = mul(r, sn);
}

// A sequential view of one (seed, stream): consecutive draws walk the counter. Usable in host
// code and, one instance per thread, in kernels. Each uniform() takes two 32-bit words, each
// pair of normal() calls one block.
class Philox {
  public:
    EQFLOW_HD Philox(uint64_t seed, uint64_t stream, uint64_t counter = 0)
        : seed_(seed), stream_(stream), counter_(counter) {}

    EQFLOW_HD uint32_t next_u32() {
        if (used_ == 4) {
            block_ = philox_block(seed_, stream_, counter_++);
            used_ = 0;
        }
        return block_.v[used_++];
    }
    EQFLOW_HD double uniform() {
        const uint32_t a = next_u32();
        const uint32_t b = next_u32();
        return uniform_from_bits(a, b);
    }
    EQFLOW_HD double normal() {
        if (has_spare_) {
            has_spare_ = false;
            return spare_;
        }
        double z0, z1;
        normal_pair_from_block(philox_block(seed_, stream_, counter_++), &z0, &z1);
        spare_ = z1;
        has_spare_ = true;
        return z0;
    }
    // Uniform integer in [0, n) (n > 0), by Lemire's multiply-shift (bias < n / 2^32).
    EQFLOW_HD uint32_t below(uint32_t n) {
        return static_cast<uint32_t>((static_cast<uint64_t>(next_u32()) * n) >> 32);
    }

    EQFLOW_HD uint64_t seed() const { return seed_; }
    EQFLOW_HD uint64_t stream() const { return stream_; }
    // The counter of the next block; together with the cached words this is the full state.
    EQFLOW_HD uint64_t counter() const { return counter_; }

  private:
    uint64_t seed_;
    uint64_t stream_;
    uint64_t counter_;
    PhiloxBlock block_{{0, 0, 0, 0}};
    int used_ = 4;
    double spare_ = 0.0;
    bool has_spare_ = false;
};

}  // namespace eqflow
