// A flow's model of either field type (eqflow/flow_model.h).
#include "eqflow/flow_model.h"

#include "eqflow/error.h"
#include "eqflow/field.h"

namespace eqflow {

const char* field_kind_name(FieldKind kind) {
    return kind == FieldKind::kernel ? "kernel" : "egnn";
}

FieldKind parse_field_kind(const std::string& name) {
    if (name == "egnn") return FieldKind::egnn;
    if (name == "kernel") return FieldKind::kernel;
    EQFLOW_THROW("unknown field type '" << name << "' (choose egnn or kernel)");
}

int FlowModel::n_particles() const {
    return kind == FieldKind::kernel ? kernel_config.n_particles : egnn_config.n_particles;
}

int FlowModel::dim() const {
    return kind == FieldKind::kernel ? kernel_config.dim : egnn_config.dim;
}

double FlowModel::length_scale() const {
    return kind == FieldKind::kernel ? kernel_config.length_scale : egnn_config.length_scale;
}

const std::string& FlowModel::system() const {
    return kind == FieldKind::kernel ? kernel_config.system : egnn_config.system;
}

std::vector<ParamEntry> FlowModel::parameter_layout() const {
    return kind == FieldKind::kernel ? kernel_parameter_layout(kernel_config)
                                     : egnn_parameter_layout(egnn_config);
}

EgnnModel FlowModel::egnn_model() const {
    EQFLOW_CHECK(kind == FieldKind::egnn,
                 "this is a " << field_kind_name(kind) << " model, not an EGNN");
    return EgnnModel{egnn_config, params};
}

KernelModel FlowModel::kernel_model() const {
    EQFLOW_CHECK(kind == FieldKind::kernel,
                 "this is a " << field_kind_name(kind) << " model, not a kernel-dynamics one");
    return KernelModel{kernel_config, params};
}

void validate_flow_model(const FlowModel& model) {
    if (model.kind == FieldKind::kernel)
        validate_kernel_model(model.kernel_model());
    else
        validate_egnn_model(model.egnn_model());
}

std::unique_ptr<Field<double>> make_reference_field(const FlowModel& model, int threads) {
    if (model.kind == FieldKind::kernel) return make_reference_field(model.kernel_model(), threads);
    return make_reference_field(model.egnn_model(), threads);
}

std::unique_ptr<Field<float>> make_fast_field(const FlowModel& model, int threads) {
    if (model.kind == FieldKind::kernel) return make_fast_field(model.kernel_model(), threads);
    return make_fast_field(model.egnn_model(), threads);
}

std::unique_ptr<Field<float>> make_cuda_field(const FlowModel& model) {
    if (model.kind == FieldKind::kernel) return make_cuda_field(model.kernel_model());
    return make_cuda_field(model.egnn_model());
}

}  // namespace eqflow
