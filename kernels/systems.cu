// kernels/systems.cu: batched pair-potential energies and forces.
//
// Layout: x [B][n][d] row-major, u [B], forces [B][n][d].
// One block per configuration. The block stages the configuration in shared memory
// (n*d*sizeof(T) bytes; n <= kMaxParticles keeps it under 48 KiB for double, d <= 3), then each
// thread owns particles i = threadIdx.x, threadIdx.x + blockDim.x, ... and sums over all j != i:
// the force on i directly (no atomics), and its share of the energy. Per-thread energies are
// accumulated in double and reduced in shared memory; thread 0 writes u.
//
// Pair convention (see eqflow/systems.h): the per-i sum over j != i visits every ordered pair
// once, which is the LJ sum as it stands and twice the DW4 sum (hence the factor 1/2 there).
// Cost per configuration: n(n-1) pair evaluations (~30 FLOP each); bytes: (n*d reads + n*d + 1
// writes) * sizeof(T).
#include <algorithm>

#include "kernels/cuda_check.cuh"
#include "kernels/device_compat.cuh"
#include "kernels/systems.cuh"

namespace eqflow::cuda {

namespace {
constexpr int kThreads = 128;
constexpr int kMaxParticles = 2048;

struct PairParams {
    int lj;           // 1: Lennard-Jones (ordered pairs), 0: double well (unordered pairs)
    double a, b, d0;  // double well
    double eps, rm, oscillator;  // Lennard-Jones
    double inv_kT;
};

// phi(r) and phi'(r)/r of one pair term as it enters E (ordered pair for LJ).
template <class T>
__device__ inline void pair_eval(const PairParams& p, T r2, T* phi, T* dphi_over_r) {
    if (p.lj) {
        const T inv_r2 = T(p.rm * p.rm) / r2;
        const T q6 = inv_r2 * inv_r2 * inv_r2;
        const T q12 = q6 * q6;
        *phi = T(p.eps) * (q12 - T(2) * q6);
        *dphi_over_r = T(p.eps) * (T(-12) * q12 + T(12) * q6) / r2;
    } else {
        const T r = sqrt(r2);
        const T y = r - T(p.d0);
        *phi = T(p.a) * y * y * y * y + T(p.b) * y * y;
        *dphi_over_r = (T(4) * T(p.a) * y * y * y + T(2) * T(p.b) * y) / r;
    }
}

template <class T, int D>
__global__ void __launch_bounds__(kThreads)
    energy_forces_kernel(const T* __restrict__ x, int n, PairParams p, T* __restrict__ u,
                         T* __restrict__ forces) {
    EQFLOW_DYNAMIC_SHARED(unsigned char, smem_raw);
    T* xs = reinterpret_cast<T*>(smem_raw);  // [n][D]
    double* red =
        reinterpret_cast<double*>(smem_raw + ((n * D * sizeof(T) + 15) / 16) * 16);  // [kThreads]
    const int64_t b = blockIdx.x;
    const T* xb = x + b * n * D;
    for (int k = threadIdx.x; k < n * D; k += blockDim.x) xs[k] = xb[k];
    __syncthreads();

    // The centre of mass (for the harmonic term of LJ); every thread computes it from smem.
    T mean[D];
    for (int a = 0; a < D; ++a) mean[a] = T(0);
    if (p.lj && p.oscillator != 0.0) {
        for (int j = 0; j < n; ++j)
            for (int a = 0; a < D; ++a) mean[a] += xs[j * D + a];
        for (int a = 0; a < D; ++a) mean[a] /= T(n);
    }

    // Factor on the per-i sum over j: 1 for ordered-pair LJ, 1/2 for unordered-pair DW.
    const T energy_factor = p.lj ? T(1) : T(0.5);
    // Force factor: d/dx_i of E; LJ ordered pairs count (i,j) and (j,i): 2 phi'; DW once.
    const T force_factor = p.lj ? T(2) : T(1);
    double e_local = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        T xi[D], g[D];
        for (int a = 0; a < D; ++a) {
            xi[a] = xs[i * D + a];
            g[a] = T(0);
        }
        T e_i = T(0);
        for (int j = 0; j < n; ++j) {
            if (j == i) continue;
            T diff[D];
            T r2 = T(0);
            for (int a = 0; a < D; ++a) {
                diff[a] = xi[a] - xs[j * D + a];
                r2 += diff[a] * diff[a];
            }
            T phi, dphi_over_r;
            pair_eval(p, r2, &phi, &dphi_over_r);
            e_i += phi;
            for (int a = 0; a < D; ++a) g[a] += force_factor * dphi_over_r * diff[a];
        }
        e_local += static_cast<double>(energy_factor * e_i);
        if (p.lj && p.oscillator != 0.0) {
            for (int a = 0; a < D; ++a) {
                const T c = xi[a] - mean[a];
                e_local += p.oscillator * static_cast<double>(c * c);
                g[a] += T(2 * p.oscillator) * c;
            }
        }
        if (forces != nullptr)
            for (int a = 0; a < D; ++a) forces[(b * n + i) * D + a] = -g[a];
    }
    red[threadIdx.x] = e_local;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) red[threadIdx.x] += red[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) u[b] = static_cast<T>(red[0] * p.inv_kT);
}

template <class T, int D>
void launch(const System& s, const T* x, int64_t B, T* u, T* forces, Stream stream) {
    PairParams p{s.kind == PotentialKind::lennard_jones ? 1 : 0,
                 s.dw_a,
                 s.dw_b,
                 s.dw_d0,
                 s.lj_eps,
                 s.lj_rm,
                 s.lj_oscillator,
                 1.0 / s.kT};
    const size_t smem = ((s.n * D * sizeof(T) + 15) / 16) * 16 + kThreads * sizeof(double);
    EQFLOW_LAUNCH((energy_forces_kernel<T, D>), static_cast<unsigned>(B), kThreads, smem,
                  EQFLOW_STREAM(stream), x, s.n, p, u, forces);
    EQFLOW_CUDA_CHECK_LAUNCH();
}
}  // namespace

template <class T>
void energy_forces(const System& s, const T* x, int64_t B, T* u, T* forces, Stream stream) {
    if (B == 0) return;
    EQFLOW_CHECK(s.n <= kMaxParticles,
                 "GPU energy supports up to " << kMaxParticles << " particles, got " << s.n);
    EQFLOW_CHECK(B <= 0x7fffffff, "GPU energy: batch of " << B << " is too large for one launch");
    switch (s.d) {
        case 1:
            launch<T, 1>(s, x, B, u, forces, stream);
            break;
        case 2:
            launch<T, 2>(s, x, B, u, forces, stream);
            break;
        case 3:
            launch<T, 3>(s, x, B, u, forces, stream);
            break;
        default:
            EQFLOW_THROW("GPU energy supports d = 1, 2, 3, got " << s.d);
    }
}

template void energy_forces<float>(const System&, const float*, int64_t, float*, float*, Stream);
template void energy_forces<double>(const System&, const double*, int64_t, double*, double*,
                                    Stream);

}  // namespace eqflow::cuda
