// eqflow/flow_model.h: a trained flow's model, whichever vector-field type it uses -- the EGNN
// (eqflow/egnn.h) or the kernel dynamics (eqflow/kernel_dynamics.h) -- and the backends of the
// field interface for it. The sampler, the evaluation, the trainer's model files and the command
// line hold a FlowModel and never ask which type it is, except to pick a backend.
//
// Model files (eqflow/model_io.h) say which type they hold in the metadata key eqflow.format
// ("egnn-v1", "kernel-dynamics-v1"; absent: an EGNN, as in files from other writers).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "eqflow/egnn.h"
#include "eqflow/export.h"
#include "eqflow/kernel_dynamics.h"

namespace eqflow {

enum class FieldKind { egnn, kernel };

// "egnn", "kernel"
EQFLOW_API const char* field_kind_name(FieldKind kind);
// "egnn" or "kernel"; anything else throws an Error listing the choices.
EQFLOW_API FieldKind parse_field_kind(const std::string& name);

// The configuration of one field type and the flat parameters of its layout. Built implicitly
// from either model type, so a function taking a FlowModel takes an EgnnModel or a KernelModel.
struct EQFLOW_API FlowModel {
    FieldKind kind = FieldKind::egnn;
    EgnnConfig egnn_config;      // kind == egnn
    KernelConfig kernel_config;  // kind == kernel
    std::vector<double> params;  // egnn_parameter_layout or kernel_parameter_layout

    FlowModel() = default;
    FlowModel(EgnnModel model)  // NOLINT(google-explicit-constructor): any model is a flow model
        : kind(FieldKind::egnn),
          egnn_config(std::move(model.config)),
          params(std::move(model.params)) {}
    FlowModel(KernelModel model)  // NOLINT(google-explicit-constructor)
        : kind(FieldKind::kernel),
          kernel_config(std::move(model.config)),
          params(std::move(model.params)) {}

    int n_particles() const;
    int dim() const;
    double length_scale() const;  // physical length per model unit
    const std::string& system() const;
    std::vector<ParamEntry> parameter_layout() const;
    // The model as its own type (copies); an Error when it is of the other type.
    EgnnModel egnn_model() const;
    KernelModel kernel_model() const;
};

// validate_egnn_model or validate_kernel_model.
EQFLOW_API void validate_flow_model(const FlowModel& model);

// The backends for either field type (see make_reference_field / make_fast_field /
// make_cuda_field of the two types).
EQFLOW_API std::unique_ptr<Field<double>> make_reference_field(const FlowModel& model,
                                                               int threads = 0);
EQFLOW_API std::unique_ptr<Field<float>> make_fast_field(const FlowModel& model, int threads = 0);
EQFLOW_API std::unique_ptr<Field<float>> make_cuda_field(const FlowModel& model);

}  // namespace eqflow
