// kernels/kernel_field.cuh: the kernel-dynamics field (eqflow/kernel_dynamics.h, docs/design.md
// section 4b) on the GPU, float32 with its long sums in double, as the fast CPU backend
// (src/cpu/kernel_field_cpu.cpp) computes them.
//
// Plain C++ header: KernelFieldNet holds device pointers to the fixed bases and into the flat
// parameter buffer. Launchers take a Stream and never allocate: the caller passes workspace of
// kernel_field_workspace_bytes(). Every result is deterministic (no atomics; every sum in a
// fixed order), so two runs on the same inputs give the same bits on any GPU.
#pragma once

#include <cstddef>
#include <cstdint>

#include "eqflow/device.h"

namespace eqflow::cuda {

// The largest dimension d, as kKernelMaxDim in eqflow/kernel_dynamics.h.
constexpr int kKernelFieldMaxDim = 16;
// The largest particle count: the gradient kernels keep two floats per particle in shared memory.
constexpr int kKernelFieldMaxParticles = 4096;

struct KernelFieldNet {
    int n = 0, d = 0;
    int K = 0;                             // radial Gaussians
    int M = 0;                             // time Gaussians
    const float* mu = nullptr;             // [K] radial centres
    const float* gamma = nullptr;          // [K] radial widths
    const double* time_centres = nullptr;  // [M]
    double time_width = 0.0;               // gamma_t
    const float* params = nullptr;         // time_map.weight [K][M], then time_map.bias [K]
};

// Throws Error when the configuration does not fit the kernels (n, d).
void kernel_field_check_supported(const KernelFieldNet& net);

// Bytes of workspace for B rows: the time basis phi [B][M] (double) and alpha [B][K] (float) of
// every row, and for the gradients (with_gradient) each row's dL/dalpha [B][K] (double).
size_t kernel_field_workspace_bytes(const KernelFieldNet& net, int64_t B, bool with_gradient);

// v [B][n][d] = v(x [B][n][d], t [B]).
void kernel_field_forward(const KernelFieldNet& net, int64_t B, const float* x, const float* t,
                          float* v, void* workspace, size_t workspace_bytes, Stream stream);

// The exact divergence div [B] in closed form (dirs == nullptr), or for K_dirs directions
// dirs [B][K_dirs][n][d] the trace estimate (1/K_dirs) sum_k dirs_k . J_v dirs_k; v nullable.
void kernel_field_trace(const KernelFieldNet& net, int64_t B, int K_dirs, const float* dirs,
                        const float* x, const float* t, float* v, float* out, void* workspace,
                        size_t workspace_bytes, Stream stream);

// Reverse mode of v (dL_ddiv == nullptr, upstream dL_dv [B][n][d]) or of the divergence
// (dL_dv == nullptr, upstream dL_ddiv [B]): dL_dparams [K M + K] += (accumulates), dL_dx
// [B][n][d] = (overwrites; nullable).
void kernel_field_backward(const KernelFieldNet& net, int64_t B, const float* x, const float* t,
                           const float* dL_dv, const float* dL_ddiv, float* dL_dparams,
                           float* dL_dx, void* workspace, size_t workspace_bytes, Stream stream);

}  // namespace eqflow::cuda
