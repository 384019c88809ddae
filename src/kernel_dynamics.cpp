// The kernel-dynamics field (eqflow/kernel_dynamics.h): configuration, default bases, parameter
// layout and initialisation. The backends are in src/cpu/kernel_field_cpu.cpp.
#include "eqflow/kernel_dynamics.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "eqflow/error.h"
#include "eqflow/philox.h"

namespace eqflow {

namespace {

// Far above any useful basis, far below what would make the layout unbounded.
constexpr int kMaxBasis = 4096;

// `count` evenly spaced centres on [lo, hi] with gamma = 1 / (2 h^2), h the spacing (a single
// centre sits at lo with the width of the whole interval).
void even_basis(int count, double lo, double hi, std::vector<double>& centres, double& gamma) {
    centres.resize(static_cast<size_t>(count));
    const double h = count > 1 ? (hi - lo) / (count - 1) : (hi - lo);
    for (int k = 0; k < count; ++k) centres[static_cast<size_t>(k)] = lo + h * k;
    gamma = 0.5 / (h * h);
}

}  // namespace

void set_kernel_bases(KernelConfig& c, int radial_count, double r_max, int time_count) {
    EQFLOW_CHECK(
        radial_count >= 1 && radial_count <= kMaxBasis,
        "kernel field: radial basis size " << radial_count << " outside [1, " << kMaxBasis << "]");
    EQFLOW_CHECK(time_count >= 1 && time_count <= kMaxBasis, "kernel field: time basis size "
                                                                 << time_count << " outside [1, "
                                                                 << kMaxBasis << "]");
    EQFLOW_CHECK(std::isfinite(r_max) && r_max > 0,
                 "kernel field: r_max must be finite and positive, got " << r_max);
    double gamma = 0.0;
    even_basis(radial_count, 0.0, r_max, c.radial_centres, gamma);
    c.radial_widths.assign(static_cast<size_t>(radial_count), gamma);
    even_basis(time_count, 0.0, 1.0, c.time_centres, c.time_width);
}

KernelConfig default_kernel_config(const std::string& system_name, int n, int d) {
    KernelConfig c;
    c.system = system_name;
    c.n_particles = n;
    c.dim = d;
    constexpr int kTimeCount = 16;
    if (system_name == "dw4") {
        set_kernel_bases(c, 32, 8.0, kTimeCount);
    } else if (system_name == "lj13") {
        set_kernel_bases(c, 50, 6.0, kTimeCount);
    } else if (system_name == "lj55" || system_name.rfind("lj:", 0) == 0) {
        const double r_max = std::max(6.0, 2.0 * std::cbrt(static_cast<double>(n)));
        set_kernel_bases(c, 50, r_max, kTimeCount);
    } else {
        set_kernel_bases(c, 32, 6.0, kTimeCount);
    }
    return c;
}

void validate_kernel_config(const KernelConfig& c) {
    EQFLOW_CHECK(c.n_particles >= 2,
                 "kernel field needs at least 2 particles, got " << c.n_particles);
    EQFLOW_CHECK(c.dim >= 1 && c.dim <= kKernelMaxDim,
                 "kernel field dimension must be in [1, " << kKernelMaxDim << "], got " << c.dim);
    const int K = c.radial_count(), M = c.time_count();
    EQFLOW_CHECK(K >= 1 && K <= kMaxBasis,
                 "kernel field: " << K << " radial centres, expected 1 to " << kMaxBasis);
    EQFLOW_CHECK(M >= 1 && M <= kMaxBasis,
                 "kernel field: " << M << " time centres, expected 1 to " << kMaxBasis);
    EQFLOW_CHECK(
        static_cast<int>(c.radial_widths.size()) == K,
        "kernel field: " << c.radial_widths.size() << " radial widths for " << K << " centres");
    for (int k = 0; k < K; ++k) {
        EQFLOW_CHECK(std::isfinite(c.radial_centres[k]),
                     "kernel field: radial centre " << k << " is not finite");
        EQFLOW_CHECK(std::isfinite(c.radial_widths[k]) && c.radial_widths[k] > 0,
                     "kernel field: radial width " << k << " = " << c.radial_widths[k]
                                                   << " is not finite and positive");
    }
    for (int m = 0; m < M; ++m)
        EQFLOW_CHECK(std::isfinite(c.time_centres[m]),
                     "kernel field: time centre " << m << " is not finite");
    EQFLOW_CHECK(std::isfinite(c.time_width) && c.time_width > 0,
                 "kernel field: time width " << c.time_width << " is not finite and positive");
    EQFLOW_CHECK(std::isfinite(c.length_scale) && c.length_scale > 0,
                 "kernel field: length_scale must be finite and positive, got " << c.length_scale);
}

std::vector<ParamEntry> kernel_parameter_layout(const KernelConfig& c) {
    validate_kernel_config(c);
    const int64_t K = c.radial_count(), M = c.time_count();
    // nn.Linear(M, K): alpha(t) = W phi(t) + b.
    return {ParamEntry{"time_map.weight", Shape{K, M}, 0},
            ParamEntry{"time_map.bias", Shape{K}, K * M}};
}

int64_t kernel_parameter_count(const KernelConfig& c) {
    validate_kernel_config(c);
    return static_cast<int64_t>(c.radial_count()) * c.time_count() + c.radial_count();
}

std::vector<double> kernel_init_parameters(const KernelConfig& c, uint64_t seed) {
    const int64_t P = kernel_parameter_count(c);
    const int64_t weights = static_cast<int64_t>(c.radial_count()) * c.time_count();
    std::vector<double> params(static_cast<size_t>(P), 0.0);
    const double bound = 0.001 / std::sqrt(static_cast<double>(c.time_count()));
    Philox rng(seed, 0);
    for (int64_t k = 0; k < weights; ++k) params[k] = (2.0 * rng.uniform() - 1.0) * bound;
    return params;
}

void validate_kernel_model(const KernelModel& model) {
    validate_kernel_config(model.config);
    EQFLOW_CHECK(static_cast<int64_t>(model.params.size()) == kernel_parameter_count(model.config),
                 "kernel model: " << model.params.size() << " parameters, the configuration has "
                                  << kernel_parameter_count(model.config));
}

}  // namespace eqflow
