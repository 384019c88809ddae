// src/cpu/simd_f32.h: the float32 building blocks of the fast CPU backend
// (src/cpu/egnn_field_fast.cpp): a SIMD vector type, a branch-free exp, and the two small matrix
// products the EGNN is made of, register-blocked with the output width fixed at compile time.
//
// The vector type is GCC's vector extension (GCC and Clang), as wide as the build's target allows:
// 16 floats with AVX-512 (EQFLOW_NATIVE=ON on this project's build machine), 8 with AVX, else 4
// (SSE2 on x86-64, NEON on ARM: the portable build). The same source compiles for all three.
//
// Matrices are row-major with explicit leading dimensions; every output width is a multiple of
// kLanes (the backend pads H to Hp, see there), so no loop has a scalar tail over outputs.
//   gemm:    C[r][o]  = (accumulate ? C[r][o] : bias[o] or 0) + sum_k A[r][k] Bt[k][o]
//   gemm_tn: C[k][o] += sum_e A[e][k] B[e][o]              (weight gradients: A^T B)
// Register blocking as llm.c's CPU matmul: a tile of R rows x NV vectors of accumulators stays in
// registers while k runs; each k loads NV vectors of Bt (unit stride) and broadcasts R values.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace eqflow::cpu::simd {

#if defined(__AVX512F__)
constexpr int kLanes = 16;
#elif defined(__AVX__)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;
#endif

typedef float vf __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(kLanes * sizeof(int32_t))));
// Unaligned, aliasing views for loads and stores.
typedef float vf_u __attribute__((vector_size(kLanes * sizeof(float)), aligned(4), may_alias));

inline vf load(const float* p) {
    return *reinterpret_cast<const vf_u*>(p);
}
inline void store(float* p, vf v) {
    *reinterpret_cast<vf_u*>(p) = v;
}
// A broadcast. Not `vf{} + s`: without -ffast-math that is a real add (0 + -0 is +0), which GCC
// emits as a scalar add and a register broadcast before every use; in product_tile's inner loop
// both went to the ports the FMAs need (AVX-512: vbroadcastss from a register runs on port 5,
// the second FMA unit), half the products' throughput. The set1 intrinsic is one broadcast,
// folded into the FMA as a memory operand where it can be.
inline vf splat(float s) {
#if defined(__AVX512F__)
    return reinterpret_cast<vf>(_mm512_set1_ps(s));
#elif defined(__AVX__)
    return reinterpret_cast<vf>(_mm256_set1_ps(s));
#elif defined(__SSE2__)
    return reinterpret_cast<vf>(_mm_set1_ps(s));
#else
    return vf{} + s;
#endif
}
// Pairwise (tree) sum of the lanes: log2(kLanes) dependent adds instead of a serial chain. Lane l
// adds lane l + w for w = kLanes/2, ..., 1, as whole-vector shuffles and adds (a scalar
// version of the same tree compiled to ~30 extracts and scalar adds, a per-edge cost).
inline float hsum(vf v) {
#if defined(__AVX512F__)
    v += __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15);
    v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7);
    v += __builtin_shufflevector(v, v, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3);
    v += __builtin_shufflevector(v, v, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1);
#elif defined(__AVX__)
    v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 4, 5, 6, 7);
    v += __builtin_shufflevector(v, v, 2, 3, 2, 3, 2, 3, 2, 3);
    v += __builtin_shufflevector(v, v, 1, 1, 1, 1, 1, 1, 1, 1);
#else
    v += __builtin_shufflevector(v, v, 2, 3, 2, 3);
    v += __builtin_shufflevector(v, v, 1, 1, 1, 1);
#endif
    return v[0];
}

// {hsum(a), hsum(b)} with one shuffle tree for both: the first step folds a's and b's halves
// into one vector (a's partial sums in the low half, b's in the high), the rest runs once.
inline void hsum2(vf a, vf b, float& sa, float& sb) {
#if defined(__AVX512F__)
    vf v =
        __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
        __builtin_shufflevector(a, b, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 4, 5, 6, 7, 12, 13, 14, 15, 12, 13, 14, 15);
    v += __builtin_shufflevector(v, v, 2, 3, 2, 3, 2, 3, 2, 3, 10, 11, 10, 11, 10, 11, 10, 11);
    v += __builtin_shufflevector(v, v, 1, 1, 1, 1, 1, 1, 1, 1, 9, 9, 9, 9, 9, 9, 9, 9);
    sa = v[0];
    sb = v[8];
#elif defined(__AVX__)
    vf v = __builtin_shufflevector(a, b, 0, 1, 2, 3, 8, 9, 10, 11) +
           __builtin_shufflevector(a, b, 4, 5, 6, 7, 12, 13, 14, 15);
    v += __builtin_shufflevector(v, v, 2, 3, 2, 3, 6, 7, 6, 7);
    v += __builtin_shufflevector(v, v, 1, 1, 1, 1, 5, 5, 5, 5);
    sa = v[0];
    sb = v[4];
#else
    sa = hsum(a);
    sb = hsum(b);
#endif
}

// exp(x) for float lanes, branch-free (Cephes' expf: range reduction by ln 2, degree-6
// polynomial, scaling by the exponent bits); relative error about 2 ulp, inputs clamped to
// [-87.3, 88.3] so the result stays a normal float (the scale is 2^n with n = round(x log2 e),
// which must stay <= 127: x < 88.376; the clamp at 88.7 used before gave n = 128, scale +inf).
inline vf vexp(vf x) {
    const vf hi = splat(88.3f), lo = splat(-87.3f);
    x = x < hi ? x : hi;
    x = x > lo ? x : lo;
    const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
    const vf t = x * 1.44269504088896341f + magic;
    const vf n = t - magic;
    vf r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    vf y = splat(1.9875691500e-4f);
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * (r * r) + r + 1.0f;
    vi tb, mb;
    std::memcpy(&tb, &t, sizeof tb);
    std::memcpy(&mb, &magic, sizeof mb);
    const vi e = ((tb - mb) + 127) << 23;
    vf scale;
    std::memcpy(&scale, &e, sizeof scale);
    return y * scale;
}
// 1 / x for x >= 1 (the callers' 1 + exp(.)): the hardware's reciprocal estimate refined by
// Newton steps r + r (1 - x r). A vector division is the slowest instruction of the edge loops
// (AVX-512 vdivps: one every ~10 cycles, on an FMA port), and the edge MLPs take three sigmoids
// per edge row. AVX-512's estimate has 14 bits: one step, within ~1 ulp, 1/1 exactly. AVX's has
// 12: one step leaves ~2 ulp and 1/1 = 0.99999994 (sigmoid(z) never reaching 1, sigmoid(0) one
// ulp low), so AVX takes a second step. x is capped at 2^126 first: an infinite x would have the
// estimate 0 and make the step 0 * (1 - inf * 0) = NaN; beyond the cap the result is 2^-126 (or
// 0 where the estimate flushes), an error under 1.2e-38. The steps are explicit FMAs (the
// residual 1 - x r is exact in one): without them, in a build that does not contract (-O1: the
// ASan job), the rounded product x r cost another ulp. The portable build divides.
inline vf vrecip(vf x) {
#if defined(__AVX512F__) || defined(__AVX__)
    const vf cap = splat(8.50705917e37f);  // 2^126
    x = x < cap ? x : cap;
#if defined(__AVX512F__)
    const __m512 xm = reinterpret_cast<__m512>(x), one = _mm512_set1_ps(1.0f);
    const __m512 r = _mm512_maskz_rcp14_ps(__mmask16(0xffff), xm);
    return reinterpret_cast<vf>(_mm512_fmadd_ps(r, _mm512_fnmadd_ps(xm, r, one), r));
#elif defined(__FMA__)
    const __m256 xm = reinterpret_cast<__m256>(x), one = _mm256_set1_ps(1.0f);
    __m256 r = _mm256_rcp_ps(xm);
    r = _mm256_fmadd_ps(r, _mm256_fnmadd_ps(xm, r, one), r);
    return reinterpret_cast<vf>(_mm256_fmadd_ps(r, _mm256_fnmadd_ps(xm, r, one), r));
#else
    vf r = reinterpret_cast<vf>(_mm256_rcp_ps(reinterpret_cast<__m256>(x)));
    r = r + r * (1.0f - x * r);
    return r + r * (1.0f - x * r);
#endif
#else
    return 1.0f / x;
#endif
}
inline vf vsigmoid(vf z) {
    return vrecip(1.0f + vexp(-z));
}
// tanh(c) = 1 - 2 / (exp(2c) + 1): saturates correctly through vexp's clamping; near 0 the
// absolute error is a few float ulps of 1 (1e-7), which is what the callers need (phi = cr tanh).
inline vf vtanh(vf c) {
    return 1.0f - 2.0f * vrecip(vexp(2.0f * c) + 1.0f);
}
// d silu / dz from z and s = sigmoid(z), kept from the forward pass.
inline vf vdsilu_sig(vf z, vf s) {
    return s * (1.0f + z * (1.0f - s));
}
inline vf vsilu(vf z) {
    return z * vsigmoid(z);
}
// d silu / dz = s (1 + z (1 - s)), s = sigmoid(z)
inline vf vdsilu(vf z) {
    const vf s = vsigmoid(z);
    return s * (1.0f + z * (1.0f - s));
}

// ---- small matrix products: C = A Bt (+ bias or + C), and C += A^T B ---------------------------
// One register-tiled kernel for both: A is read through two strides, A(r, k) = A[r a_rs + k a_ks]
// (a_ks = 1: A row-major [rows][K]; a_rs = 1: A^T of a row-major [K][rows]), Bt is [K][N]
// row-major, C [rows][N]; N is a multiple of kLanes.

template <int NV, int R>
inline void product_tile(int K, const float* A, int64_t a_rs, int64_t a_ks, const float* Bt,
                         int64_t ldb, const float* bias, bool accumulate, float* C, int64_t ldc) {
    vf acc[R][NV];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v)
            acc[r][v] = accumulate ? load(C + r * ldc + v * kLanes)
                                   : (bias ? load(bias + v * kLanes) : vf{});
    for (int k = 0; k < K; ++k) {
        vf b[NV];
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) b[v] = load(Bt + k * ldb + v * kLanes);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
            const vf a = splat(A[r * a_rs + k * a_ks]);
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) acc[r][v] += a * b[v];
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) store(C + r * ldc + v * kLanes, acc[r][v]);
}

// The vector register file: 32 with AVX-512 (zmm0-31) and on AArch64 (v0-31), 16 with AVX/AVX2
// (ymm0-15) and SSE2 on x86-64.
#if defined(__AVX512F__) || defined(__aarch64__)
constexpr int kVectorRegisters = 32;
#else
constexpr int kVectorRegisters = 16;
#endif

// Rows per register tile. With 32 registers: about 16 accumulators. With 16: the R x NV
// accumulators, the NV vectors of a Bt row and the broadcast must fit in 16 (R NV + NV + 1 <= 16),
// or the tile spills accumulators to the stack on every k and the loads of Bt fold into the FMAs,
// one load per FMA: on AVX2, NV 4 (H 32) as 4 x 4 spilled three accumulators per k.
template <int NV>
constexpr int tile_rows() {
    if constexpr (kVectorRegisters >= 32) {
        return NV >= 8 ? 2 : NV >= 4 ? 4 : NV == 3 ? 5 : 8;
    } else {
        return NV >= 6 ? 1 : NV >= 4 ? 2 : NV == 3 ? 4 : NV == 2 ? 6 : 8;
    }
}

template <int NV>
inline void product_fixed(int rows, int K, const float* A, int64_t a_rs, int64_t a_ks,
                          const float* Bt, int64_t ldb, const float* bias, bool accumulate,
                          float* C, int64_t ldc) {
    constexpr int R = tile_rows<NV>();
    int r = 0;
    for (; r + R <= rows; r += R)
        product_tile<NV, R>(K, A + r * a_rs, a_rs, a_ks, Bt, ldb, bias, accumulate, C + r * ldc,
                            ldc);
    // The remaining rows in tiles of 4, 2, 1 (each k's Bt row is loaded once per tile).
    if (R > 4 && r + 4 <= rows) {
        product_tile<NV, 4>(K, A + r * a_rs, a_rs, a_ks, Bt, ldb, bias, accumulate, C + r * ldc,
                            ldc);
        r += 4;
    }
    if (R > 2 && r + 2 <= rows) {
        product_tile<NV, 2>(K, A + r * a_rs, a_rs, a_ks, Bt, ldb, bias, accumulate, C + r * ldc,
                            ldc);
        r += 2;
    }
    for (; r < rows; ++r)
        product_tile<NV, 1>(K, A + r * a_rs, a_rs, a_ks, Bt, ldb, bias, accumulate, C + r * ldc,
                            ldc);
}

// Any width N (a multiple of kLanes): runs of up to 8 vectors.
inline void product(int rows, int N, int K, const float* A, int64_t a_rs, int64_t a_ks,
                    const float* Bt, int64_t ldb, const float* bias, bool accumulate, float* C,
                    int64_t ldc) {
    for (int o = 0; o < N; o += 8 * kLanes) {
        const int nv = (N - o) / kLanes < 8 ? (N - o) / kLanes : 8;
        const float* b = bias ? bias + o : nullptr;
        switch (nv) {
#define EQFLOW_PRODUCT_CASE(V)                                                            \
    case V:                                                                               \
        product_fixed<V>(rows, K, A, a_rs, a_ks, Bt + o, ldb, b, accumulate, C + o, ldc); \
        break;
            EQFLOW_PRODUCT_CASE(1)
            EQFLOW_PRODUCT_CASE(2)
            EQFLOW_PRODUCT_CASE(3)
            EQFLOW_PRODUCT_CASE(4)
            EQFLOW_PRODUCT_CASE(5)
            EQFLOW_PRODUCT_CASE(6)
            EQFLOW_PRODUCT_CASE(7)
            EQFLOW_PRODUCT_CASE(8)
#undef EQFLOW_PRODUCT_CASE
            default:
                break;
        }
    }
}

// C [rows][N] = A [rows][K] Bt [K][N] + bias, or += when `accumulate`.
inline void gemm(int rows, int N, int K, const float* A, int64_t lda, const float* Bt, int64_t ldb,
                 const float* bias, bool accumulate, float* C, int64_t ldc) {
    product(rows, N, K, A, lda, 1, Bt, ldb, bias, accumulate, C, ldc);
}

// C [K][N] += sum_e A[e][k] B[e][o], e < E.
inline void gemm_tn(int E, int K, int N, const float* A, int64_t lda, const float* B, int64_t ldb,
                    float* C, int64_t ldc) {
    product(K, N, E, A, 1, lda, B, ldb, nullptr, true, C, ldc);
}

}  // namespace eqflow::cpu::simd
