// eqflow/kernel_dynamics.h: the equivariant kernel-dynamics field of Koehler, Klein & Noe 2020
// (docs/design.md section 4b) -- configuration, parameter layout, initialisation and its two CPU
// backends of the field interface (eqflow/field.h).
//
//   v_i(x, t) = sum_{j != i} (x_i - x_j) f(r_ij, t),   r_ij = |x_i - x_j|
//   f(r, t)   = sum_k alpha_k(t) g_k(r),                g_k(r) = exp(-gamma_k (r - mu_k)^2)
//   alpha(t)  = W phi(t) + b,                           phi_m(t) = exp(-gamma_t (t - c_m)^2)
//
// The radial centres mu_k and widths gamma_k (K of them), the time centres c_m (M) and the time
// width gamma_t are fixed hyperparameters, recorded in the model file's metadata; the parameters
// are the time map's weight W [K][M] and bias b [K] (v is linear in them). v is the gradient of
// the invariant pair potential sum_{i<j} Phi(r_ij, t) with dPhi/dr = r f, so it is E(n)- and
// permutation-equivariant, and it is mean-free (the pair sum is antisymmetric). Its divergence
// and every other operation is in closed form (no forward-mode passes):
//   div v = sum_i sum_{j != i} [ d f(r_ij, t) + r_ij df/dr(r_ij, t) ]
// f has one type of particle: the field cannot tell atoms apart, so typed systems (aldp) are not
// supported (validate_kernel_config says so).
//
// Shapes: x [B][n][d] row-major, t [B]. Parameters in one flat buffer, kernel_parameter_layout()
// (PyTorch-style names: "time_map.weight" [K, M], "time_map.bias" [K]).
//
// Gradient contract (backward, divergence_backward): parameter gradients ACCUMULATE
// (dL_dparams += ...), input gradients OVERWRITE (dL_dx = ...).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "eqflow/egnn.h"  // ParamEntry
#include "eqflow/export.h"

namespace eqflow {

// The largest dimension d (the backends keep a pair's displacement in a fixed-size array).
constexpr int kKernelMaxDim = 16;

struct KernelConfig {
    std::string system;  // the target system's name, informational
    int n_particles = 0;
    int dim = 0;
    std::vector<double> radial_centres;  // mu_k [K], model units
    std::vector<double> radial_widths;   // gamma_k [K] > 0, 1 / model units^2
    std::vector<double> time_centres;    // c_m [M]
    double time_width = 0.0;             // gamma_t > 0
    // Physical length per model unit, as EgnnConfig::length_scale: the field works in model
    // units y = x / length_scale (1 for the particle systems).
    double length_scale = 1.0;

    int radial_count() const { return static_cast<int>(radial_centres.size()); }
    int time_count() const { return static_cast<int>(time_centres.size()); }
};

// Evenly spaced bases with the width of one spacing (a Gaussian's standard deviation equals the
// spacing h, gamma = 1 / (2 h^2), so neighbours overlap at exp(-1/2)):
//   radial: K centres on [0, r_max]; time: M centres on [0, 1].
// Defaults (model units), chosen so that the centres cover the pair distances of both ends of
// the flow: dw4 K = 32 on [0, 8] (equilibrium data: pair distances in [1.9, 6.2]; the prior's
// 99.9% quantile 5.2); lj13 K = 50 on [0, 6] (data [0.84, 5.4], prior 99.9% 5.7; the finer
// spacing, 0.12, resolves the LJ shell near r = 1); lj55 and lj:N K = 50 on
// [0, max(6, 2 n^(1/3))] (the cluster's diameter grows as n^(1/3)); anything else K = 32 on
// [0, 6]. M = 16 everywhere. So dw4 has 32 * 16 + 32 = 544 parameters and lj13 850.
EQFLOW_API KernelConfig default_kernel_config(const std::string& system_name, int n, int d);

// The same bases for given counts and radial range (the --radial-basis, --time-basis and
// --r-max options of eqflow train): K >= 1 centres on [0, r_max] (a single one at 0), M >= 1 on
// [0, 1].
EQFLOW_API void set_kernel_bases(KernelConfig& config, int radial_count, double r_max,
                                 int time_count);

// Throws Error naming the problem: n >= 2, 1 <= d <= 16, 1 <= K, M <= 4096, one width per radial
// centre, finite centres, finite positive widths, finite positive length scale.
EQFLOW_API void validate_kernel_config(const KernelConfig& config);

EQFLOW_API std::vector<ParamEntry> kernel_parameter_layout(const KernelConfig& config);
EQFLOW_API int64_t kernel_parameter_count(const KernelConfig& config);

// time_map.weight U(-a, a) with a = 0.001 / sqrt(M) (from Philox(seed, 0), in C order) and
// time_map.bias zero: the flow starts near the identity, as the EGNN's coordinate output (gain
// 0.001) does. v is linear in the parameters, so the flow-matching loss is a convex quadratic
// and the start only sets how far Adam has to walk.
EQFLOW_API std::vector<double> kernel_init_parameters(const KernelConfig& config, uint64_t seed);

struct KernelModel {
    KernelConfig config;
    std::vector<double> params;
};

// validate_kernel_config, and the parameter count against the configuration's.
EQFLOW_API void validate_kernel_model(const KernelModel& model);

template <class T>
class Field;

// The backends of the field interface for a kernel model: one implementation
// (src/cpu/kernel_field_cpu.cpp), templated on the precision. The reference computes in double;
// the fast one in float32 with its long sums (divergence, traces, parameter gradients) in double.
// Both split the rows into fixed chunks of 16 over up to `threads` threads of the pool (0: all);
// results do not depend on the thread count. Both implement divergence_backward.
EQFLOW_API std::unique_ptr<Field<double>> make_reference_field(const KernelModel& model,
                                                               int threads = 0);
EQFLOW_API std::unique_ptr<Field<float>> make_fast_field(const KernelModel& model, int threads = 0);
// The CUDA backend (src/kernel_cuda_field.cpp, kernels/kernel_field.cu): float32 with the same
// long sums in double as the fast CPU one, every operation including divergence_backward, and
// deterministic results (no atomics; fixed-order sums). An Error without a usable GPU or in a
// build without CUDA. Tested on the CPU emulator of the GPU (emu/) only, not yet on a GPU.
EQFLOW_API std::unique_ptr<Field<float>> make_cuda_field(const KernelModel& model);

}  // namespace eqflow
