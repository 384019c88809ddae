// The EGNN vector field: configuration, parameter layout, initialisation, and the checked
// public entry points of the CPU reference path (src/cpu/egnn_cpu.cpp).
#include "eqflow/egnn.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/egnn_cpu.h"
#include "eqflow/error.h"
#include "eqflow/philox.h"

namespace eqflow {

EgnnConfig default_egnn_config(const std::string& system_name, int n, int d) {
    EgnnConfig c;
    c.system = system_name;
    c.n_particles = n;
    c.dim = d;
    if (system_name == "lj55") {
        c.hidden = 64;
        c.layers = 7;
    } else if (system_name == "aldp") {
        c.hidden = 64;
        c.layers = 5;
    } else {  // dw4, lj13 and anything else: the published LJ13 size
        c.hidden = 32;
        c.layers = 3;
    }
    c.attention = true;
    c.tanh = true;
    return c;
}

void validate_egnn_config(const EgnnConfig& c) {
    EQFLOW_CHECK(c.n_particles >= 2, "EGNN needs at least 2 particles, got " << c.n_particles);
    EQFLOW_CHECK(c.dim >= 1, "EGNN dimension must be positive, got " << c.dim);
    EQFLOW_CHECK(c.hidden >= 1, "EGNN hidden width must be positive, got " << c.hidden);
    EQFLOW_CHECK(c.layers >= 1, "EGNN needs at least one layer, got " << c.layers);
    EQFLOW_CHECK(
        std::isfinite(c.coords_range) && c.coords_range >= 0.0,
        "EGNN coords_range must be finite and >= 0 (0: 15/layers), got " << c.coords_range);
    EQFLOW_CHECK(std::isfinite(c.length_scale) && c.length_scale > 0.0,
                 "EGNN length_scale must be finite and positive, got " << c.length_scale);
    if (!c.atom_types.empty()) {
        EQFLOW_CHECK(static_cast<int>(c.atom_types.size()) == c.n_particles,
                     "EGNN atom_types has " << c.atom_types.size() << " entries for "
                                            << c.n_particles << " particles");
        for (int type : c.atom_types)
            EQFLOW_CHECK(type >= 0, "EGNN atom type " << type << " is negative");
    }
}

void validate_egnn_model(const EgnnModel& model) {
    validate_egnn_config(model.config);
    EQFLOW_CHECK(static_cast<int64_t>(model.params.size()) == egnn_parameter_count(model.config),
                 "EGNN model: " << model.params.size() << " parameters, the configuration has "
                                << egnn_parameter_count(model.config));
}

std::vector<ParamEntry> egnn_parameter_layout(const EgnnConfig& c) {
    validate_egnn_config(c);
    const int64_t H = c.hidden, F = c.in_features();
    std::vector<ParamEntry> layout;
    int64_t offset = 0;
    auto add = [&](const std::string& name, Shape shape) {
        const int64_t count = shape_numel(shape);
        layout.push_back(ParamEntry{name, std::move(shape), offset});
        offset += count;
    };
    // The PyTorch module's state_dict order: registration order of the submodules.
    add("embedding.weight", {H, F});
    add("embedding.bias", {H});
    add("embedding_out.weight", {F, H});
    add("embedding_out.bias", {F});
    for (int l = 0; l < c.layers; ++l) {
        const std::string g = "gcl_" + std::to_string(l) + ".";
        add(g + "edge_mlp.0.weight", {H, 2 * H + 2});
        add(g + "edge_mlp.0.bias", {H});
        add(g + "edge_mlp.2.weight", {H, H});
        add(g + "edge_mlp.2.bias", {H});
        add(g + "node_mlp.0.weight", {H, 2 * H});
        add(g + "node_mlp.0.bias", {H});
        add(g + "node_mlp.2.weight", {H, H});
        add(g + "node_mlp.2.bias", {H});
        add(g + "coord_mlp.0.weight", {H, H});
        add(g + "coord_mlp.0.bias", {H});
        add(g + "coord_mlp.2.weight", {1, H});
        if (c.attention) {
            add(g + "att_mlp.0.weight", {1, H});
            add(g + "att_mlp.0.bias", {1});
        }
    }
    return layout;
}

EgnnOffsets egnn_offsets(const EgnnConfig& config) {
    const std::vector<ParamEntry> layout = egnn_parameter_layout(config);
    auto find = [&](const std::string& name) -> int64_t {
        for (const ParamEntry& e : layout)
            if (e.name == name) return e.offset;
        EQFLOW_THROW("internal: parameter " << name << " missing from the layout");
    };
    EgnnOffsets off;
    off.emb_w = find("embedding.weight");
    off.emb_b = find("embedding.bias");
    off.emb_out_w = find("embedding_out.weight");
    off.emb_out_b = find("embedding_out.bias");
    for (int l = 0; l < config.layers; ++l) {
        const std::string g = "gcl_" + std::to_string(l) + ".";
        EgnnLayerOffsets lo;
        lo.edge_w0 = find(g + "edge_mlp.0.weight");
        lo.edge_b0 = find(g + "edge_mlp.0.bias");
        lo.edge_w2 = find(g + "edge_mlp.2.weight");
        lo.edge_b2 = find(g + "edge_mlp.2.bias");
        lo.node_w0 = find(g + "node_mlp.0.weight");
        lo.node_b0 = find(g + "node_mlp.0.bias");
        lo.node_w2 = find(g + "node_mlp.2.weight");
        lo.node_b2 = find(g + "node_mlp.2.bias");
        lo.coord_w0 = find(g + "coord_mlp.0.weight");
        lo.coord_b0 = find(g + "coord_mlp.0.bias");
        lo.coord_w2 = find(g + "coord_mlp.2.weight");
        if (config.attention) {
            lo.att_w0 = find(g + "att_mlp.0.weight");
            lo.att_b0 = find(g + "att_mlp.0.bias");
        }
        off.layers.push_back(lo);
    }
    return off;
}

int64_t egnn_parameter_count(const EgnnConfig& c) {
    const std::vector<ParamEntry> layout = egnn_parameter_layout(c);
    const ParamEntry& last = layout.back();
    return last.offset + shape_numel(last.shape);
}

std::vector<double> egnn_init_parameters(const EgnnConfig& c, uint64_t seed) {
    const std::vector<ParamEntry> layout = egnn_parameter_layout(c);
    std::vector<double> params(static_cast<size_t>(egnn_parameter_count(c)));
    // nn.Linear(in, out) draws weight [out, in] and bias [out] from U(-1/sqrt(in), 1/sqrt(in)):
    // the fan-in is the weight's second dimension; a bias takes the fan-in of the weight before it.
    int64_t fan_in = 1;
    for (size_t e = 0; e < layout.size(); ++e) {
        const ParamEntry& p = layout[e];
        const bool is_bias = p.shape.size() == 1;
        if (!is_bias) fan_in = p.shape[1];
        double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
        if (p.name.size() >= 18 &&
            p.name.compare(p.name.size() - 18, 18, "coord_mlp.2.weight") == 0) {
            // Xavier-uniform, gain 0.001: bound = gain sqrt(6 / (fan_in + fan_out)).
            bound = 0.001 * std::sqrt(6.0 / static_cast<double>(p.shape[0] + p.shape[1]));
        }
        Philox rng(seed, static_cast<uint64_t>(e));  // one stream per tensor, in layout order
        const int64_t count = shape_numel(p.shape);
        for (int64_t k = 0; k < count; ++k)
            params[p.offset + k] = (2.0 * rng.uniform() - 1.0) * bound;
    }
    return params;
}

namespace {

void check_call(const EgnnConfig& c, const double* params, int64_t B, const double* x,
                const double* t, const char* what) {
    validate_egnn_config(c);
    EQFLOW_CHECK(B >= 0, what << ": batch size " << B << " is negative");
    EQFLOW_CHECK(params != nullptr, what << ": no parameters");
    if (B > 0) {
        EQFLOW_CHECK(x != nullptr, what << ": no positions");
        EQFLOW_CHECK(t != nullptr, what << ": no times");
    }
}

}  // namespace

void egnn_forward(const EgnnConfig& c, const double* params, int64_t B, const double* x,
                  const double* t, double* v) {
    check_call(c, params, B, x, t, "egnn_forward");
    EQFLOW_CHECK(B == 0 || v != nullptr, "egnn_forward: no output");
    const EgnnOffsets off = egnn_offsets(c);
    const int64_t nd = static_cast<int64_t>(c.n_particles) * c.dim;
    for (int64_t b = 0; b < B; ++b)
        cpu::egnn_forward_one(c, off, params, x + b * nd, t[b], v + b * nd);
}

void egnn_backward(const EgnnConfig& c, const double* params, int64_t B, const double* x,
                   const double* t, const double* dL_dv, double* dL_dparams, double* dL_dx) {
    check_call(c, params, B, x, t, "egnn_backward");
    EQFLOW_CHECK(B == 0 || dL_dv != nullptr, "egnn_backward: no dL_dv");
    EQFLOW_CHECK(dL_dparams != nullptr, "egnn_backward: no parameter gradient buffer");
    const EgnnOffsets off = egnn_offsets(c);
    const int64_t nd = static_cast<int64_t>(c.n_particles) * c.dim;
    for (int64_t b = 0; b < B; ++b) {
        cpu::egnn_backward_one(c, off, params, x + b * nd, t[b], dL_dv + b * nd, dL_dparams,
                               dL_dx ? dL_dx + b * nd : nullptr);
    }
}

void egnn_jvp(const EgnnConfig& c, const double* params, int64_t B, const double* x,
              const double* t, int K, const double* xdot, double* v, double* vdot) {
    check_call(c, params, B, x, t, "egnn_jvp");
    EQFLOW_CHECK(K >= 1, "egnn_jvp: need at least one tangent direction, got " << K);
    EQFLOW_CHECK(B == 0 || (xdot != nullptr && vdot != nullptr), "egnn_jvp: no tangents");
    const EgnnOffsets off = egnn_offsets(c);
    const int64_t nd = static_cast<int64_t>(c.n_particles) * c.dim;
    for (int64_t b = 0; b < B; ++b) {
        cpu::egnn_jvp_one(c, off, params, x + b * nd, t[b], K, xdot + b * K * nd,
                          v ? v + b * nd : nullptr, vdot + b * K * nd);
    }
}

void egnn_divergence(const EgnnConfig& c, const double* params, int64_t B, const double* x,
                     const double* t, double* v, double* div) {
    check_call(c, params, B, x, t, "egnn_divergence");
    EQFLOW_CHECK(B == 0 || div != nullptr, "egnn_divergence: no output");
    const EgnnOffsets off = egnn_offsets(c);
    const int nd = c.n_particles * c.dim;
    // All n*d basis directions at once, one primal pass per sample.
    const std::vector<double> eye = cpu::egnn_unit_tangents(nd);
    std::vector<double> vdot(eye.size());
    for (int64_t b = 0; b < B; ++b)
        div[b] = cpu::egnn_divergence_one(c, off, params, x + b * nd, t[b], eye.data(), vdot.data(),
                                          v ? v + b * nd : nullptr);
}

void egnn_divergence_hutchinson(const EgnnConfig& c, const double* params, int64_t B,
                                const double* x, const double* t, int probes, uint64_t seed,
                                double* v, double* div) {
    check_call(c, params, B, x, t, "egnn_divergence_hutchinson");
    EQFLOW_CHECK(probes >= 1,
                 "egnn_divergence_hutchinson: need at least one probe, got " << probes);
    EQFLOW_CHECK(B == 0 || div != nullptr, "egnn_divergence_hutchinson: no output");
    const EgnnOffsets off = egnn_offsets(c);
    const int nd = c.n_particles * c.dim;
    // Probes in chunks, so that many probes do not need memory for all of them at once.
    constexpr int kChunk = 64;
    std::vector<double> eps, vdot;
    for (int64_t b = 0; b < B; ++b) {
        Philox rng(seed, static_cast<uint64_t>(b));
        double sum = 0.0;
        for (int done = 0; done < probes; done += kChunk) {
            const int K = std::min(kChunk, probes - done);
            eps.resize(static_cast<size_t>(K) * nd);
            vdot.resize(static_cast<size_t>(K) * nd);
            for (double& e : eps) e = (rng.next_u32() & 1u) ? 1.0 : -1.0;
            cpu::egnn_jvp_one(c, off, params, x + b * nd, t[b], K, eps.data(),
                              (v && done == 0) ? v + b * nd : nullptr, vdot.data());
            for (size_t k = 0; k < eps.size(); ++k) sum += eps[k] * vdot[k];
        }
        div[b] = sum / probes;
    }
}

void egnn_jacobian(const EgnnConfig& c, const double* params, int64_t B, const double* x,
                   const double* t, double* jac) {
    check_call(c, params, B, x, t, "egnn_jacobian");
    EQFLOW_CHECK(B == 0 || jac != nullptr, "egnn_jacobian: no output");
    // Forward mode along the n*d unit directions, one sample at a time: vdot[q][p] = dv_p/dx_q.
    const int nd = c.n_particles * c.dim;
    const std::vector<double> eye = cpu::egnn_unit_tangents(nd);
    std::vector<double> vdot(eye.size());
    for (int64_t b = 0; b < B; ++b) {
        egnn_jvp(c, params, 1, x + b * nd, t + b, nd, eye.data(), nullptr, vdot.data());
        double* J = jac + b * static_cast<int64_t>(nd) * nd;
        for (int p = 0; p < nd; ++p)
            for (int q = 0; q < nd; ++q)
                J[static_cast<size_t>(p) * nd + q] = vdot[static_cast<size_t>(q) * nd + p];
    }
}

}  // namespace eqflow
