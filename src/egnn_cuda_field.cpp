// The CUDA backend of the field interface (eqflow/field.h) for the EGNN: a float32 copy of the
// parameters on the device and the fused kernels of kernels/egnn.cu. The arguments were checked
// by Field<float>; this file only wires buffers to launchers.
//
// Limits (kernels/egnn.cuh): H <= 128 for forward and the forward-mode operations; backward keeps
// four H x H matrices in shared memory and needs H <= 64. Divergence results do not depend on
// the GPU model; backward gradients are bit-identical run to run on one GPU, but the grouping of
// samples (and so float rounding) follows the number of SMs.
#include <memory>
#include <vector>

#include "eqflow/device.h"
#include "eqflow/egnn.h"
#include "eqflow/error.h"
#include "eqflow/field.h"

#if defined(EQFLOW_HAVE_CUDA)
#include "kernels/egnn.cuh"
#include "kernels/egnn_net.h"
#endif

namespace eqflow {

#if defined(EQFLOW_HAVE_CUDA)
namespace {

class CudaEgnnField final : public Field<float> {
  public:
    explicit CudaEgnnField(const EgnnModel& model)
        : Field<float>(model.config.n_particles, model.config.dim,
                       egnn_parameter_count(model.config), Device::cuda),
          config_(model.config),
          params_(static_cast<size_t>(parameter_count()), Device::cuda) {
        if (!config_.atom_types.empty()) {
            types_ = Buffer<int>(config_.atom_types.size(), Device::cuda);
            types_.copy_from_host(config_.atom_types.data(), config_.atom_types.size());
        }
        net_ =
            cuda::make_egnn_net(config_, params_.data(), types_.empty() ? nullptr : types_.data());
        cuda::egnn_check_supported(net_);
        do_set_parameters(model.params);
    }

  protected:
    TensorView<float> do_parameters() override {
        return TensorView<float>(params_.data(), Shape{parameter_count()}, Device::cuda);
    }
    std::vector<double> do_parameters_to_host() const override {
        std::vector<float> f(params_.size());
        params_.copy_to_host(f.data(), f.size());
        return std::vector<double>(f.begin(), f.end());
    }
    void do_set_parameters(const std::vector<double>& params) override {
        const std::vector<float> f(params.begin(), params.end());
        params_.copy_from_host(f.data(), f.size());
    }

    size_t do_workspace_bytes(FieldOp op, int64_t B, int K) const override {
        switch (op) {
            case FieldOp::backward:
                return cuda::egnn_backward_workspace_bytes(net_, B, parameter_count());
            case FieldOp::divergence:
                return cuda::egnn_divergence_workspace_bytes(net_, B);
            case FieldOp::jvp_trace:
                return cuda::egnn_jvp_trace_workspace_bytes(net_, B, K);
            case FieldOp::forward:
            case FieldOp::forward_backward:  // sized by Field (forward, then backward)
            case FieldOp::divergence_backward:
                break;
        }
        return 0;
    }

    void do_forward(TensorView<const float> x, TensorView<const float> t, TensorView<float> v,
                    TensorView<unsigned char>, Stream stream) override {
        cuda::egnn_forward(net_, x.size(0), x.data, t.data, v.data, stream);
    }

    void do_backward(TensorView<const float> x, TensorView<const float> t,
                     TensorView<const float> dL_dv, TensorView<float> dL_dparams,
                     TensorView<float> dL_dx, TensorView<unsigned char> ws,
                     Stream stream) override {
        cuda::egnn_backward(net_, params_.data(), parameter_count(), x.size(0), x.data, t.data,
                            dL_dv.data, dL_dparams.data, dL_dx.defined() ? dL_dx.data : nullptr,
                            ws.data, static_cast<size_t>(ws.numel()), stream);
    }

    void do_divergence(TensorView<const float> x, TensorView<const float> t, TensorView<float> v,
                       TensorView<float> div, TensorView<unsigned char> ws,
                       Stream stream) override {
        cuda::egnn_divergence(net_, x.size(0), x.data, t.data, v.defined() ? v.data : nullptr,
                              div.data, ws.data, static_cast<size_t>(ws.numel()), stream);
    }

    void do_jvp_trace(TensorView<const float> x, TensorView<const float> t,
                      TensorView<const float> dirs, TensorView<float> v, TensorView<float> trace,
                      TensorView<unsigned char> ws, Stream stream) override {
        cuda::egnn_jvp_trace(net_, x.size(0), static_cast<int>(dirs.size(1)), dirs.data, x.data,
                             t.data, v.defined() ? v.data : nullptr, trace.data, ws.data,
                             static_cast<size_t>(ws.numel()), stream);
    }

  private:
    EgnnConfig config_;
    Buffer<float> params_;
    Buffer<int> types_;
    cuda::EgnnNet net_;
};

}  // namespace
#endif

std::unique_ptr<Field<float>> make_cuda_field(const EgnnModel& model) {
    EQFLOW_CHECK(cuda_available(), "the GPU EGNN needs a GPU, but " << cuda_status());
    validate_egnn_model(model);
#if defined(EQFLOW_HAVE_CUDA)
    return std::make_unique<CudaEgnnField>(model);
#else
    EQFLOW_THROW("the GPU EGNN: eqflow was built without CUDA");
#endif
}

}  // namespace eqflow
