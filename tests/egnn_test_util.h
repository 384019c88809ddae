// tests/egnn_test_util.h: random EGNN models for the tests that compare implementations of the
// field (CPU reference, fused GPU kernels, the emulated kernels, the unfused baseline, the
// device ODE).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "eqflow/egnn.h"
#include "eqflow/field.h"
#include "eqflow/tensor.h"
#include "test_util.h"

namespace eqflow::test {

struct EgnnCase {
    const char* name;
    int n, d, hidden, layers;
    bool attention = true, tanh = true, typed = false;
};

// A randomly initialised model whose field and divergence are O(1). The initialisation gives the
// last coordinate layer a gain of 0.001, which would let a wrong kernel hide below any
// tolerance, so that layer is scaled by 300. Typed models get the types i % 3.
inline EgnnModel random_egnn_model(const EgnnCase& c, uint64_t seed) {
    EgnnModel m;
    m.config.system = c.name;
    m.config.n_particles = c.n;
    m.config.dim = c.d;
    m.config.hidden = c.hidden;
    m.config.layers = c.layers;
    m.config.attention = c.attention;
    m.config.tanh = c.tanh;
    if (c.typed)
        for (int i = 0; i < c.n; ++i) m.config.atom_types.push_back(i % 3);
    m.params = egnn_init_parameters(m.config, seed);
    for (const ParamEntry& p : egnn_parameter_layout(m.config))
        if (p.name.find("coord_mlp.2.weight") != std::string::npos)
            for (int64_t k = 0; k < shape_numel(p.shape); ++k) m.params[p.offset + k] *= 300.0;
    return m;
}

// B random configurations of case c (no two particles closer than 0.3) at the times (b + 1/2) / B:
// in double for the CPU reference, and the same values in float for the kernels.
struct EgnnInputs {
    std::vector<double> x, t;
    std::vector<float> xf, tf;
};

inline EgnnInputs random_egnn_inputs(const EgnnCase& c, int B, uint64_t salt) {
    EgnnInputs in;
    auto gen = rng(salt);
    in.x = random_configurations(B, c.n, c.d, 1.0, 0.3, gen);
    for (int b = 0; b < B; ++b) in.t.push_back((b + 0.5) / B);
    in.xf.assign(in.x.begin(), in.x.end());
    in.tf.assign(in.t.begin(), in.t.end());
    return in;
}

// The CUDA backend of the field interface with a workspace of its own: the four operations of
// eqflow/field.h on device tensors, for tests that call them one at a time.
struct GpuField {
    std::unique_ptr<Field<float>> field;
    FieldWorkspace ws;

    explicit GpuField(const EgnnModel& model) : field(make_cuda_field(model)) {}
    void forward(TensorView<const float> x, TensorView<const float> t, TensorView<float> v) {
        field->forward(x, t, v, ws.get(*field, FieldOp::forward, x.size(0)));
    }
    void divergence(TensorView<const float> x, TensorView<const float> t, TensorView<float> v,
                    TensorView<float> div) {
        field->divergence(x, t, v, div, ws.get(*field, FieldOp::divergence, x.size(0)));
    }
    void jvp_trace(TensorView<const float> x, TensorView<const float> t,
                   TensorView<const float> dirs, TensorView<float> v, TensorView<float> div) {
        field->jvp_trace(
            x, t, dirs, v, div,
            ws.get(*field, FieldOp::jvp_trace, x.size(0), static_cast<int>(dirs.size(1))));
    }
    void backward(TensorView<const float> x, TensorView<const float> t,
                  TensorView<const float> dL_dv, TensorView<float> dL_dparams,
                  TensorView<float> dL_dx) {
        field->backward(x, t, dL_dv, dL_dparams, dL_dx,
                        ws.get(*field, FieldOp::backward, x.size(0)));
    }
};

}  // namespace eqflow::test
