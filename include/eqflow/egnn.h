// eqflow/egnn.h: the EGNN vector field of docs/design.md section 4 -- configuration, parameter
// layout (PyTorch state_dict names and shapes), initialisation, and the CPU reference path in
// double precision: forward, backward, exact divergence, Hutchinson estimate, dense Jacobian.
//
// Semantics (docs/design.md section 4): features [one_hot(type), t] -> embedding; the edge
// attribute a_ij = |x0_i - x0_j|^2 uses the input coordinates, r_ij the current ones; messages use
// the old h; the coordinate update is sum_j (x_i - x_j) / (sqrt(r_ij + 1e-8) + 1) * phi_ij; sum
// aggregation; v = x^L - x^0 with the particle mean removed. Model files: eqflow/model_io.h.
//
// Shapes: x [B][n][d] row-major, t [B], v [B][n][d], div [B]. Parameters live in one flat
// buffer; egnn_parameter_layout() names every tensor in it (offset, shape) in a fixed order.
//
// Gradient contract (backward): parameter gradients ACCUMULATE (dL_dparams += ...), input
// gradients OVERWRITE (dL_dx = ...).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "eqflow/export.h"
#include "eqflow/tensor.h"

namespace eqflow {

struct EgnnConfig {
    std::string system;  // name of the target system ("dw4", "lj13", ...), informational
    int n_particles = 0;
    int dim = 0;
    int hidden = 32;
    int layers = 3;
    bool attention = true;
    bool tanh = true;
    double coords_range = 0.0;    // 0 means the default 15 / layers
    std::vector<int> atom_types;  // empty: untyped; else a type index per particle
    // Physical length per model unit: the network and the N(0, I) prior live in model
    // coordinates y = x / length_scale (x in the system's units, e.g. nm for aldp). 1 for the
    // particle systems (the paper's convention); molecules in nm are scaled so that the data's
    // coordinate RMS is about 1. The EGNN functions here work in model units; the flow-level
    // functions of eqflow/flow.h convert (log q_x = log q_y - (n-1) d log length_scale).
    double length_scale = 1.0;

    // 0 when untyped, else the largest type index + 1.
    int num_types() const {
        int m = -1;
        for (int type : atom_types) m = type > m ? type : m;
        return m + 1;
    }
    int in_features() const { return num_types() + 1; }  // one-hot type, then t
    double effective_coords_range() const {
        return coords_range > 0 ? coords_range : 15.0 / layers;
    }
};

// The defaults of docs/design.md: dw4 and lj13 H = 32, L = 3; lj55 H = 64, L = 7; attention and
// tanh.
EQFLOW_API EgnnConfig default_egnn_config(const std::string& system_name, int n, int d);

// Throws Error naming the problem: n >= 2, d >= 1, hidden >= 1, layers >= 1, coords_range
// finite and >= 0, atom_types empty or one non-negative index per particle. Every entry point
// below calls it.
EQFLOW_API void validate_egnn_config(const EgnnConfig& config);

struct ParamEntry {
    std::string name;  // e.g. "gcl_0.edge_mlp.0.weight"
    Shape shape;       // PyTorch shape, e.g. [H, 2H+2]
    int64_t offset;    // into the flat buffer
};

EQFLOW_API std::vector<ParamEntry> egnn_parameter_layout(const EgnnConfig& config);
EQFLOW_API int64_t egnn_parameter_count(const EgnnConfig& config);

// PyTorch's nn.Linear default (U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases) and
// Xavier-uniform with gain 0.001 for each coord_mlp.2.weight; tensor k of the layout draws
// from Philox(seed, k) (uniform(), in C order), so the values do not depend on anything else.
EQFLOW_API std::vector<double> egnn_init_parameters(const EgnnConfig& config, uint64_t seed);

// CPU reference (double). All pointers are host memory.
EQFLOW_API void egnn_forward(const EgnnConfig& config, const double* params, int64_t B,
                             const double* x, const double* t, double* v);

// dL_dparams += dL/dparams; dL_dx = dL/dx (nullable: skip the input gradient).
EQFLOW_API void egnn_backward(const EgnnConfig& config, const double* params, int64_t B,
                              const double* x, const double* t, const double* dL_dv,
                              double* dL_dparams, double* dL_dx);

// v (nullable) and the exact divergence sum_{i,a} dv_ia/dx_ia per sample, by forward-mode
// tangents along all n*d input directions sharing one primal pass.
EQFLOW_API void egnn_divergence(const EgnnConfig& config, const double* params, int64_t B,
                                const double* x, const double* t, double* v, double* div);

// Forward mode: K Jacobian-vector products per sample on one shared primal pass.
// xdot [B][K][n][d] -> vdot [B][K][n][d], vdot[b][k] = J_v(x_b) xdot[b][k]; v [B][n][d] nullable.
EQFLOW_API void egnn_jvp(const EgnnConfig& config, const double* params, int64_t B, const double* x,
                         const double* t, int K, const double* xdot, double* v, double* vdot);

// Hutchinson estimate with `probes` Rademacher vectors per sample (Philox(seed, sample)):
// div[b] = mean_k eps_k . J_v eps_k, unbiased for the exact divergence (E[eps eps^T] = I). The
// probes cover all n*d coordinates; the probe values are a pure function of (seed, b, probe).
EQFLOW_API void egnn_divergence_hutchinson(const EgnnConfig& config, const double* params,
                                           int64_t B, const double* x, const double* t, int probes,
                                           uint64_t seed, double* v, double* div);

// Dense Jacobian jac [B][n*d][n*d], jac[b][p][q] = dv_p / dx_q (tests and debugging).
EQFLOW_API void egnn_jacobian(const EgnnConfig& config, const double* params, int64_t B,
                              const double* x, const double* t, double* jac);

// A model: configuration + parameters (+ the system name it was trained for).
struct EgnnModel {
    EgnnConfig config;
    std::vector<double> params;
};

template <class T>
class Field;

// validate_egnn_config, and the parameter count against the configuration's (every backend's
// factory calls it).
EQFLOW_API void validate_egnn_model(const EgnnModel& model);

// The backends of the field interface (eqflow/field.h) for an EGNN model; each holds its own copy
// of the parameters. The CPU reference: double, plain loops, rows in fixed chunks over up to
// `threads` threads of the pool (0: all; results do not depend on it). The fast CPU backend:
// float32 on the host, tiled SIMD products (src/cpu/egnn_field_fast.cpp), the same threading
// rule; what `--device cpu` runs unless the reference is asked for. CUDA: float32 on the
// device, fused kernels; without a usable GPU it throws an Error that says why.
EQFLOW_API std::unique_ptr<Field<double>> make_reference_field(const EgnnModel& model,
                                                               int threads = 0);
EQFLOW_API std::unique_ptr<Field<float>> make_fast_field(const EgnnModel& model, int threads = 0);
EQFLOW_API std::unique_ptr<Field<float>> make_cuda_field(const EgnnModel& model);

}  // namespace eqflow
