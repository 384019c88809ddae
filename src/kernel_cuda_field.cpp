// The CUDA backend of the field interface (eqflow/field.h) for the kernel-dynamics field
// (eqflow/kernel_dynamics.h): float32 copies of the parameters and of the radial bases on the
// device, the time centres in double, and the kernels of kernels/kernel_field.cu. The arguments
// were checked by Field<float>; this file only wires buffers to launchers.
//
// Every operation of the CPU backends, divergence_backward included. Results are deterministic:
// no atomics, every sum in a fixed order (see kernels/kernel_field.cu), independent of the GPU.
#include <memory>
#include <vector>

#include "eqflow/device.h"
#include "eqflow/error.h"
#include "eqflow/field.h"
#include "eqflow/kernel_dynamics.h"

#if defined(EQFLOW_HAVE_CUDA)
#include "kernels/kernel_field.cuh"
#endif

namespace eqflow {

#if defined(EQFLOW_HAVE_CUDA)
namespace {

static_assert(cuda::kKernelFieldMaxDim == kKernelMaxDim, "one largest dimension for all backends");

template <class T>
Buffer<T> device_copy(const std::vector<T>& host) {
    Buffer<T> b(host.size(), Device::cuda);
    b.copy_from_host(host.data(), host.size());
    return b;
}

class CudaKernelField final : public Field<float> {
  public:
    explicit CudaKernelField(const KernelModel& model)
        : Field<float>(model.config.n_particles, model.config.dim,
                       kernel_parameter_count(model.config), Device::cuda),
          params_(static_cast<size_t>(parameter_count()), Device::cuda),
          mu_(device_copy(std::vector<float>(model.config.radial_centres.begin(),
                                             model.config.radial_centres.end()))),
          gamma_(device_copy(std::vector<float>(model.config.radial_widths.begin(),
                                                model.config.radial_widths.end()))),
          time_centres_(device_copy(model.config.time_centres)) {
        net_.n = model.config.n_particles;
        net_.d = model.config.dim;
        net_.K = model.config.radial_count();
        net_.M = model.config.time_count();
        net_.mu = mu_.data();
        net_.gamma = gamma_.data();
        net_.time_centres = time_centres_.data();
        net_.time_width = model.config.time_width;
        net_.params = params_.data();
        cuda::kernel_field_check_supported(net_);
        do_set_parameters(model.params);
    }

    bool supports_divergence_backward() const override { return true; }

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

    size_t do_workspace_bytes(FieldOp op, int64_t B, int) const override {
        const bool gradient = op == FieldOp::backward || op == FieldOp::divergence_backward;
        return cuda::kernel_field_workspace_bytes(net_, B, gradient);
    }

    void do_forward(TensorView<const float> x, TensorView<const float> t, TensorView<float> v,
                    TensorView<unsigned char> ws, Stream stream) override {
        cuda::kernel_field_forward(net_, x.size(0), x.data, t.data, v.data, ws.data,
                                   static_cast<size_t>(ws.numel()), stream);
    }

    void do_backward(TensorView<const float> x, TensorView<const float> t,
                     TensorView<const float> dL_dv, TensorView<float> dL_dparams,
                     TensorView<float> dL_dx, TensorView<unsigned char> ws,
                     Stream stream) override {
        cuda::kernel_field_backward(net_, x.size(0), x.data, t.data, dL_dv.data, nullptr,
                                    dL_dparams.data, dL_dx.defined() ? dL_dx.data : nullptr,
                                    ws.data, static_cast<size_t>(ws.numel()), stream);
    }

    void do_divergence(TensorView<const float> x, TensorView<const float> t, TensorView<float> v,
                       TensorView<float> div, TensorView<unsigned char> ws,
                       Stream stream) override {
        cuda::kernel_field_trace(net_, x.size(0), 0, nullptr, x.data, t.data,
                                 v.defined() ? v.data : nullptr, div.data, ws.data,
                                 static_cast<size_t>(ws.numel()), stream);
    }

    void do_jvp_trace(TensorView<const float> x, TensorView<const float> t,
                      TensorView<const float> dirs, TensorView<float> v, TensorView<float> trace,
                      TensorView<unsigned char> ws, Stream stream) override {
        cuda::kernel_field_trace(net_, x.size(0), static_cast<int>(dirs.size(1)), dirs.data, x.data,
                                 t.data, v.defined() ? v.data : nullptr, trace.data, ws.data,
                                 static_cast<size_t>(ws.numel()), stream);
    }

    void do_divergence_backward(TensorView<const float> x, TensorView<const float> t,
                                TensorView<const float> dL_ddiv, TensorView<float> dL_dparams,
                                TensorView<float> dL_dx, TensorView<unsigned char> ws,
                                Stream stream) override {
        cuda::kernel_field_backward(net_, x.size(0), x.data, t.data, nullptr, dL_ddiv.data,
                                    dL_dparams.data, dL_dx.defined() ? dL_dx.data : nullptr,
                                    ws.data, static_cast<size_t>(ws.numel()), stream);
    }

  private:
    Buffer<float> params_;  // time_map.weight [K][M], then time_map.bias [K]
    Buffer<float> mu_, gamma_;
    Buffer<double> time_centres_;
    cuda::KernelFieldNet net_;
};

}  // namespace
#endif

std::unique_ptr<Field<float>> make_cuda_field(const KernelModel& model) {
    EQFLOW_CHECK(cuda_available(),
                 "the GPU kernel-dynamics field needs a GPU, but " << cuda_status());
    validate_kernel_model(model);
#if defined(EQFLOW_HAVE_CUDA)
    return std::make_unique<CudaKernelField>(model);
#else
    EQFLOW_THROW("the GPU kernel-dynamics field: eqflow was built without CUDA");
#endif
}

}  // namespace eqflow
