// kernels/kernel_field.cu: the kernel-dynamics field on the GPU (see kernels/kernel_field.cuh and
// the closed forms at the top of src/cpu/kernel_field_cpu.cpp, which this file follows term by
// term).
//
// Work decomposition: one block of kBlock threads per sample.
// - Set-up: the block's threads write the row's time basis phi_m(t) (double) and
//   alpha_k(t) = sum_m W_km phi_m + b_k (summed in double, stored as float) to the workspace.
// - Outputs per particle (v_i, dL/dx_i): thread i sums over all j != i of the ordered pair (i, j)
//   in order j = 0, 1, ... . Each unordered pair is evaluated twice (once per particle), which
//   costs twice the radial sums of the CPU's walk over i < j but needs no scatter: no atomics,
//   no per-pair buffers, and every output is one thread's fixed-order sum.
// - Scalars per sample (divergence, trace): each thread's sum over its particles' ordered pairs
//   in double, then thread 0 adds the kBlock partial sums in thread order.
// - dL/dalpha_k per sample (the gradients): walked one row i of the unordered pairs (i, j > i) at
//   a time: the threads compute the row's r_ij (and c . delta) into shared memory, then thread k
//   adds that row's terms to dL/dalpha_k (in double, its own entry of the workspace, pairs in
//   the CPU's order).
// - dL/dparams: a second kernel, one thread per parameter, sums the samples' contributions
//   dL/dW_km = sum_b s_b dL/dalpha_bk phi_m(t_b), dL/db_k = sum_b s_b dL/dalpha_bk in sample order
//   (double), and adds the float result to dL_dparams.
// So the results depend on neither the schedule nor the GPU, only on the inputs.
//
// Precision as the fast CPU backend: the pair arithmetic and the radial sums in float (skipping
// Gaussians whose exponent exceeds 30, as it does), the long sums (divergence, traces, dL/dalpha,
// the parameter gradients, alpha(t)) in double.
#include <algorithm>

#include "eqflow/error.h"
#include "kernels/cuda_check.cuh"
#include "kernels/device_compat.cuh"
#include "kernels/kernel_field.cuh"

namespace eqflow::cuda {

namespace {

constexpr int kBlock = 64;
constexpr int kParamBlock = 128;
// exp(-30) = 9e-14 is far below float's resolution of the O(1) sums a term joins (the fast CPU
// backend skips the same terms; the double reference keeps them, within the tests' tolerance).
constexpr float kSkipExponent = 30.0f;
constexpr size_t kAlign = 256;

size_t aligned(size_t bytes) {
    return (bytes + kAlign - 1) / kAlign * kAlign;
}

// The workspace's sections (see kernel_field_workspace_bytes).
struct Workspace {
    double* phi = nullptr;     // [B][M]
    double* dalpha = nullptr;  // [B][K], gradients only
    float* alpha = nullptr;    // [B][K]
};

Workspace carve(const KernelFieldNet& net, int64_t B, bool with_gradient, void* base) {
    char* p = static_cast<char*>(base);
    Workspace w;
    w.phi = reinterpret_cast<double*>(p);
    p += aligned(static_cast<size_t>(B) * net.M * sizeof(double));
    if (with_gradient) {
        w.dalpha = reinterpret_cast<double*>(p);
        p += aligned(static_cast<size_t>(B) * net.K * sizeof(double));
    }
    w.alpha = reinterpret_cast<float*>(p);
    return w;
}

// phi_m(t) and alpha_k(t) of row b into the workspace (and dL/dalpha zeroed when present); ends
// with a barrier, so every thread of the block sees them.
__device__ void set_up_row(const KernelFieldNet& net, int64_t b, float t, const Workspace& w) {
    double* phi = w.phi + b * net.M;
    float* alpha = w.alpha + b * net.K;
    const double td = static_cast<double>(t);
    for (int m = threadIdx.x; m < net.M; m += blockDim.x) {
        const double z = td - net.time_centres[m];
        phi[m] = exp(-net.time_width * z * z);
    }
    __syncthreads();
    const float* W = net.params;
    const float* bias = net.params + static_cast<int64_t>(net.K) * net.M;
    for (int k = threadIdx.x; k < net.K; k += blockDim.x) {
        double a = static_cast<double>(bias[k]);
        for (int m = 0; m < net.M; ++m)
            a += static_cast<double>(W[static_cast<int64_t>(k) * net.M + m]) * phi[m];
        alpha[k] = static_cast<float>(a);
        if (w.dalpha) w.dalpha[b * net.K + k] = 0.0;
    }
    __syncthreads();
}

// One ordered pair's geometry: delta = x_i - x_j, r = |delta|, u = delta / r (0 when r = 0).
struct Pair {
    float delta[kKernelFieldMaxDim];
    float u[kKernelFieldMaxDim];
    float r;
};

__device__ inline void set_pair(const float* xi, const float* xj, int d, Pair& p) {
    float r2 = 0.0f;
    for (int a = 0; a < d; ++a) {
        p.delta[a] = xi[a] - xj[a];
        r2 += p.delta[a] * p.delta[a];
    }
    p.r = sqrtf(r2);
    const float inv = p.r > 0.0f ? 1.0f / p.r : 0.0f;
    for (int a = 0; a < d; ++a) p.u[a] = p.delta[a] * inv;
}

// f(r) = sum_k alpha_k g_k(r), its derivatives f' and f'' (each output nullable).
__device__ inline void radial(const KernelFieldNet& net, const float* alpha, float r, float* f,
                              float* fp, float* fpp) {
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f;
    for (int k = 0; k < net.K; ++k) {
        const float gam = net.gamma[k];
        const float z = r - net.mu[k], e = gam * z * z;
        if (e > kSkipExponent) continue;
        const float g = expf(-e);
        const float ag = alpha[k] * g;
        s0 += ag;
        s1 += ag * (-2.0f * gam * z);
        s2 += ag * (2.0f * gam * (2.0f * gam * z * z - 1.0f));
    }
    if (f) *f = s0;
    if (fp) *fp = s1;
    if (fpp) *fpp = s2;
}

__global__ void __launch_bounds__(kBlock)
    forward_kernel(KernelFieldNet net, const float* __restrict__ x, const float* __restrict__ t,
                   float* __restrict__ v, Workspace w) {
    const int64_t b = blockIdx.x;
    set_up_row(net, b, t[b], w);
    const int n = net.n, d = net.d;
    const float* alpha = w.alpha + b * net.K;
    const float* xb = x + b * n * d;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float acc[kKernelFieldMaxDim];
        for (int a = 0; a < d; ++a) acc[a] = 0.0f;
        Pair p;
        for (int j = 0; j < n; ++j) {
            if (j == i) continue;
            set_pair(xb + i * d, xb + j * d, d, p);
            float f;
            radial(net, alpha, p.r, &f, nullptr, nullptr);
            for (int a = 0; a < d; ++a) acc[a] += f * p.delta[a];
        }
        for (int a = 0; a < d; ++a) v[(b * n + i) * d + a] = acc[a];
    }
}

// dirs == nullptr: div = sum over ordered pairs of d f + r f' (twice the CPU's sum over unordered
// pairs). Otherwise the ordered pairs' q . A q over the directions, halved (each unordered pair is
// met twice), over K_dirs.
__global__ void __launch_bounds__(kBlock)
    trace_kernel(KernelFieldNet net, int K_dirs, const float* __restrict__ dirs,
                 const float* __restrict__ x, const float* __restrict__ t, float* __restrict__ v,
                 float* __restrict__ out, Workspace w) {
    __shared__ double partial[kBlock];
    const int64_t b = blockIdx.x;
    set_up_row(net, b, t[b], w);
    const int n = net.n, d = net.d;
    const int64_t nd = static_cast<int64_t>(n) * d;
    const float* alpha = w.alpha + b * net.K;
    const float* xb = x + b * nd;
    const float* eb = dirs ? dirs + b * K_dirs * nd : nullptr;
    const float dimf = static_cast<float>(d);
    double sum = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float acc[kKernelFieldMaxDim];
        for (int a = 0; a < d; ++a) acc[a] = 0.0f;
        Pair p;
        for (int j = 0; j < n; ++j) {
            if (j == i) continue;
            set_pair(xb + i * d, xb + j * d, d, p);
            float f, fp;
            radial(net, alpha, p.r, &f, &fp, nullptr);
            const float rfp = p.r * fp;
            if (!eb) {
                sum += static_cast<double>(dimf * f + rfp);
            } else {
                for (int k = 0; k < K_dirs; ++k) {
                    const float* e = eb + k * nd;
                    float qq = 0.0f, uq = 0.0f;
                    for (int a = 0; a < d; ++a) {
                        const float q = e[i * d + a] - e[j * d + a];
                        qq += q * q;
                        uq += p.u[a] * q;
                    }
                    sum += static_cast<double>(f * qq + rfp * uq * uq);
                }
            }
            if (v)
                for (int a = 0; a < d; ++a) acc[a] += f * p.delta[a];
        }
        if (v)
            for (int a = 0; a < d; ++a) v[(b * n + i) * d + a] = acc[a];
    }
    partial[threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
        double s = 0.0;
        for (int k = 0; k < static_cast<int>(blockDim.x); ++k) s += partial[k];
        out[b] = static_cast<float>(eb ? 0.5 * s / K_dirs : s);
    }
}

// Reverse mode of v (g_v, upstream dL/dv) or of the divergence (g_div, upstream dL/ddiv):
//   v:   dL/dx_i = sum_{j != i} c f + (c . delta) f' u with c = dL/dv_i - dL/dv_j,
//        dL/dalpha_k = sum over unordered pairs of (c . delta) g_k
//   div: dL/dx_i = sum_{j != i} 2 g_div ((d + 1) f' + r f'') u,
//        dL/dalpha_k = sum over unordered pairs of d g_k + r g_k' (times 2 g_div in the
//        parameter kernel)
// Dynamic shared memory: r and c . delta of one row's pairs, 2 n floats.
__global__ void __launch_bounds__(kBlock)
    backward_kernel(KernelFieldNet net, const float* __restrict__ x, const float* __restrict__ t,
                    const float* __restrict__ g_v, const float* __restrict__ g_div,
                    float* __restrict__ dL_dx, Workspace w) {
    EQFLOW_DYNAMIC_SHARED(float, smem);
    const int64_t b = blockIdx.x;
    set_up_row(net, b, t[b], w);
    const int n = net.n, d = net.d;
    const int64_t nd = static_cast<int64_t>(n) * d;
    const float* alpha = w.alpha + b * net.K;
    const float* xb = x + b * nd;
    const float* gb = g_v ? g_v + b * nd : nullptr;
    const float dimf = static_cast<float>(d);

    if (dL_dx) {
        const float gd = g_div ? g_div[b] : 0.0f;
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            float acc[kKernelFieldMaxDim];
            for (int a = 0; a < d; ++a) acc[a] = 0.0f;
            Pair p;
            for (int j = 0; j < n; ++j) {
                if (j == i) continue;
                set_pair(xb + i * d, xb + j * d, d, p);
                if (gb) {
                    float c[kKernelFieldMaxDim];
                    float cd = 0.0f;
                    for (int a = 0; a < d; ++a) {
                        c[a] = gb[i * d + a] - gb[j * d + a];
                        cd += c[a] * p.delta[a];
                    }
                    float f, fp;
                    radial(net, alpha, p.r, &f, &fp, nullptr);
                    for (int a = 0; a < d; ++a) acc[a] += c[a] * f + cd * fp * p.u[a];
                } else {
                    float fp, fpp;
                    radial(net, alpha, p.r, nullptr, &fp, &fpp);
                    const float wgt = 2.0f * gd * ((dimf + 1.0f) * fp + p.r * fpp);
                    for (int a = 0; a < d; ++a) acc[a] += wgt * p.u[a];
                }
            }
            for (int a = 0; a < d; ++a) dL_dx[b * nd + i * d + a] = acc[a];
        }
    }

    // dL/dalpha, one row of unordered pairs (i, j > i) at a time.
    float* row_r = smem;       // [n], entry j
    float* row_cd = smem + n;  // [n], entry j (reverse mode of v only)
    double* dalpha = w.dalpha + b * net.K;
    for (int i = 0; i + 1 < n; ++i) {
        for (int j = i + 1 + threadIdx.x; j < n; j += blockDim.x) {
            Pair p;
            set_pair(xb + i * d, xb + j * d, d, p);
            row_r[j] = p.r;
            if (gb) {
                float cd = 0.0f;
                for (int a = 0; a < d; ++a) cd += (gb[i * d + a] - gb[j * d + a]) * p.delta[a];
                row_cd[j] = cd;
            }
        }
        __syncthreads();
        for (int k = threadIdx.x; k < net.K; k += blockDim.x) {
            const float gam = net.gamma[k], mu = net.mu[k];
            double acc = dalpha[k];
            for (int j = i + 1; j < n; ++j) {
                const float r = row_r[j];
                const float z = r - mu, e = gam * z * z;
                if (e > kSkipExponent) continue;
                const float g = expf(-e);
                if (gb) {
                    acc += static_cast<double>(row_cd[j] * g);
                } else {
                    const float gp = -2.0f * gam * z * g;
                    acc += static_cast<double>(dimf * g + r * gp);
                }
            }
            dalpha[k] = acc;
        }
        __syncthreads();  // before the next row overwrites row_r
    }
}

// dL_dparams[p] += sum_b s_b dL/dalpha_bk (phi_m(t_b) for the weights), s_b = 1 (reverse mode
// of v) or 2 dL/ddiv_b (of the divergence), samples in order.
__global__ void __launch_bounds__(kParamBlock)
    param_gradient_kernel(KernelFieldNet net, int64_t B, const float* __restrict__ g_div,
                          Workspace w, float* __restrict__ dL_dparams) {
    const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t KM = static_cast<int64_t>(net.K) * net.M;
    if (p >= KM + net.K) return;
    const bool weight = p < KM;
    const int k = static_cast<int>(weight ? p / net.M : p - KM);
    const int m = weight ? static_cast<int>(p % net.M) : 0;
    double sum = 0.0;
    for (int64_t b = 0; b < B; ++b) {
        const double scale = g_div ? 2.0 * static_cast<double>(g_div[b]) : 1.0;
        const double ga = scale * w.dalpha[b * net.K + k];
        sum += weight ? ga * w.phi[b * net.M + m] : ga;
    }
    dL_dparams[p] += static_cast<float>(sum);
}

void check_workspace(const KernelFieldNet& net, int64_t B, bool with_gradient, void* workspace,
                     size_t workspace_bytes) {
    const size_t need = kernel_field_workspace_bytes(net, B, with_gradient);
    EQFLOW_CHECK(
        workspace != nullptr && workspace_bytes >= need,
        "GPU kernel field needs " << need << " bytes of workspace, got " << workspace_bytes);
    EQFLOW_CHECK(B <= 0x7fffffff, "GPU kernel field: batch of " << B << " too large for a launch");
}

}  // namespace

void kernel_field_check_supported(const KernelFieldNet& net) {
    EQFLOW_CHECK(net.n >= 2 && net.n <= kKernelFieldMaxParticles,
                 "GPU kernel field supports 2 to " << kKernelFieldMaxParticles << " particles, got "
                                                   << net.n);
    EQFLOW_CHECK(net.d >= 1 && net.d <= kKernelFieldMaxDim,
                 "GPU kernel field supports d <= " << kKernelFieldMaxDim << ", got " << net.d);
    EQFLOW_CHECK(net.K >= 1 && net.M >= 1, "GPU kernel field: empty bases");
}

size_t kernel_field_workspace_bytes(const KernelFieldNet& net, int64_t B, bool with_gradient) {
    if (B == 0) return 0;
    const size_t rows = static_cast<size_t>(B);
    size_t bytes = aligned(rows * net.M * sizeof(double)) + rows * net.K * sizeof(float);
    if (with_gradient) bytes += aligned(rows * net.K * sizeof(double));
    return bytes;
}

void kernel_field_forward(const KernelFieldNet& net, int64_t B, const float* x, const float* t,
                          float* v, void* workspace, size_t workspace_bytes, Stream stream) {
    if (B == 0) return;
    check_workspace(net, B, false, workspace, workspace_bytes);
    const Workspace w = carve(net, B, false, workspace);
    EQFLOW_LAUNCH(forward_kernel, static_cast<unsigned>(B), kBlock, 0, EQFLOW_STREAM(stream), net,
                  x, t, v, w);
    EQFLOW_CUDA_CHECK_LAUNCH();
}

void kernel_field_trace(const KernelFieldNet& net, int64_t B, int K_dirs, const float* dirs,
                        const float* x, const float* t, float* v, float* out, void* workspace,
                        size_t workspace_bytes, Stream stream) {
    if (B == 0) return;
    EQFLOW_CHECK(dirs == nullptr || K_dirs >= 1, "GPU kernel field: need at least one direction");
    check_workspace(net, B, false, workspace, workspace_bytes);
    const Workspace w = carve(net, B, false, workspace);
    EQFLOW_LAUNCH(trace_kernel, static_cast<unsigned>(B), kBlock, 0, EQFLOW_STREAM(stream), net,
                  K_dirs, dirs, x, t, v, out, w);
    EQFLOW_CUDA_CHECK_LAUNCH();
}

void kernel_field_backward(const KernelFieldNet& net, int64_t B, const float* x, const float* t,
                           const float* dL_dv, const float* dL_ddiv, float* dL_dparams,
                           float* dL_dx, void* workspace, size_t workspace_bytes, Stream stream) {
    if (B == 0) return;
    EQFLOW_CHECK((dL_dv == nullptr) != (dL_ddiv == nullptr),
                 "GPU kernel field backward: exactly one of dL_dv and dL_ddiv");
    kernel_field_check_supported(net);
    check_workspace(net, B, true, workspace, workspace_bytes);
    const Workspace w = carve(net, B, true, workspace);
    const size_t smem = 2 * static_cast<size_t>(net.n) * sizeof(float);
    EQFLOW_LAUNCH(backward_kernel, static_cast<unsigned>(B), kBlock, smem, EQFLOW_STREAM(stream),
                  net, x, t, dL_dv, dL_ddiv, dL_dx, w);
    EQFLOW_CUDA_CHECK_LAUNCH();
    const int64_t P = static_cast<int64_t>(net.K) * net.M + net.K;
    const int64_t blocks = (P + kParamBlock - 1) / kParamBlock;
    EQFLOW_LAUNCH(param_gradient_kernel, static_cast<unsigned>(blocks), kParamBlock, 0,
                  EQFLOW_STREAM(stream), net, B, dL_ddiv, w, dL_dparams);
    EQFLOW_CUDA_CHECK_LAUNCH();
}

}  // namespace eqflow::cuda
