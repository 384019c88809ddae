// eqflow/field.h: the one vector-field interface (docs/design.md section 1). The trainer, the
// ODE integrator and the command line use a field only through it; each backend implements it.
//
// A Field<T> evaluates v(x, t) for batches x [B][n][d], t [B] that live in the backend's memory
// (device()) in its precision T: double for the CPU reference (src/cpu/), float for CUDA
// (kernels/). Four operations:
//   forward     v = v(x, t)
//   backward    reverse mode: dL_dparams += dL/dparams, dL_dx = dL/dx (optional)
//   forward_backward
//               forward and backward of one loss in one call: v = v(x, t); for each range of
//               rows whose v is final, the caller's callback writes those rows of dL_dv; then
//               backward as above. A backend that keeps each row's activations between its
//               forward and its backward (in cache) skips the backward's repeated forward; the
//               default is forward, the callback once for all rows, backward.
//   divergence  v (optional) and the exact divergence sum_{i,a} dv_ia/dx_ia, forward mode along
//               all n*d unit directions sharing one primal pass
//   jvp_trace   v (optional) and trace[b] = (1/K) sum_k dirs[b][k] . (J_v(x_b) dirs[b][k]) for K
//               given directions dirs [B][K][n][d] (Hutchinson's estimate with random ones)
//   divergence_backward
//               reverse mode of the exact divergence (likelihood training differentiates through
//               it): dL_dparams += sum_b g[b] d div_b / dparams, dL_dx[b] = g[b] d div_b / dx_b
//               (optional). Second derivatives of v: a backend that does not provide them
//               throws (supports_divergence_backward() says so up front).
// Gradient contract: parameter gradients ACCUMULATE, input gradients OVERWRITE.
//
// Scratch memory belongs to the caller (CUB's two-step pattern): workspace_bytes(op, B, K) says
// how many bytes of the field's memory a call on B rows needs; the call takes a view of at least
// that many. A call never allocates. FieldWorkspace below is a grow-only holder for callers.
//
// The public methods check their arguments once (shapes, device, workspace size) and then call
// the backend's do_* implementation, which may assume them. A backend is created from a model by
// its factory (make_reference_field / make_cuda_field in eqflow/egnn.h); a second field type
// implements the same class with its own parameter layout. Plain C++17: no backend header.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "eqflow/buffer.h"
#include "eqflow/device.h"
#include "eqflow/error.h"
#include "eqflow/export.h"
#include "eqflow/tensor.h"

namespace eqflow {

enum class FieldOp {
    forward,
    backward,
    divergence,
    jvp_trace,
    divergence_backward,
    forward_backward
};

// The output gradient of forward_backward: grad(b0, rows) is called once rows [b0, b0 + rows) of
// v are final and must write the same rows of dL_dv (both in the field's memory; on a device,
// enqueued on the call's stream). It may be called from any thread, concurrently for disjoint
// ranges, in any order, and must read and write only those rows (a per-row loss such as flow
// matching's). The default implementation calls grad(0, B) once.
using OutputGradient = std::function<void(int64_t b0, int64_t rows)>;

EQFLOW_API const char* field_op_name(FieldOp op);

template <class T>
class EQFLOW_API Field {
  public:
    virtual ~Field() = default;
    Field(const Field&) = delete;
    Field& operator=(const Field&) = delete;

    int n_particles() const { return n_; }
    int dim() const { return d_; }
    int64_t parameter_count() const { return parameter_count_; }
    Device device() const { return device_; }

    // The parameters (flat, the model's layout), in the field's memory and precision. An
    // optimiser may update them in place; the next call uses the new values.
    TensorView<T> parameters() { return do_parameters(); }
    // Host copies in double (checkpoints, model files), and replacement from them.
    std::vector<double> parameters_to_host() const { return do_parameters_to_host(); }
    void set_parameters(const std::vector<double>& params) {
        EQFLOW_CHECK(
            static_cast<int64_t>(params.size()) == parameter_count_,
            "field parameters: " << params.size() << " values, the field has " << parameter_count_);
        do_set_parameters(params);
    }

    // Bytes of scratch memory (in device()'s memory) that `op` needs for B rows and K directions.
    size_t workspace_bytes(FieldOp op, int64_t B, int K = 0) const {
        EQFLOW_CHECK(B >= 0 && K >= 0, "workspace_bytes: negative sizes " << B << ", " << K);
        return need_bytes(op, B, K);
    }

    void forward(TensorView<const T> x, TensorView<const T> t, TensorView<T> v,
                 TensorView<unsigned char> workspace, Stream stream = nullptr) {
        check_batch(x, t, "forward");
        check_out(v, x.shape, "v");
        check_workspace(workspace, FieldOp::forward, x.size(0), 0);
        if (x.size(0) > 0) do_forward(x, t, v, workspace, stream);
    }

    void backward(TensorView<const T> x, TensorView<const T> t, TensorView<const T> dL_dv,
                  TensorView<T> dL_dparams, TensorView<T> dL_dx,
                  TensorView<unsigned char> workspace, Stream stream = nullptr) {
        check_batch(x, t, "backward");
        check_in(dL_dv, x.shape, "dL_dv");
        check_out(dL_dparams, Shape{parameter_count_}, "dL_dparams");
        if (dL_dx.defined()) check_out(dL_dx, x.shape, "dL_dx");
        check_workspace(workspace, FieldOp::backward, x.size(0), 0);
        if (x.size(0) > 0) do_backward(x, t, dL_dv, dL_dparams, dL_dx, workspace, stream);
    }

    // forward, grad (see OutputGradient) and backward in one call: v = v(x, t) and dL_dv are
    // outputs (dL_dv as the callback writes it), the rest as in backward. The workspace is sized
    // by workspace_bytes(FieldOp::forward_backward, B). Same results as forward, grad(0, B),
    // backward (the fast CPU backend: the same bits).
    void forward_backward(TensorView<const T> x, TensorView<const T> t, TensorView<T> v,
                          const OutputGradient& grad, TensorView<T> dL_dv, TensorView<T> dL_dparams,
                          TensorView<T> dL_dx, TensorView<unsigned char> workspace,
                          Stream stream = nullptr) {
        check_batch(x, t, "forward_backward");
        check_out(v, x.shape, "v");
        EQFLOW_CHECK(static_cast<bool>(grad), "forward_backward: no output-gradient callback");
        check_out(dL_dv, x.shape, "dL_dv");
        check_out(dL_dparams, Shape{parameter_count_}, "dL_dparams");
        if (dL_dx.defined()) check_out(dL_dx, x.shape, "dL_dx");
        check_workspace(workspace, FieldOp::forward_backward, x.size(0), 0);
        if (x.size(0) > 0)
            do_forward_backward(x, t, v, grad, dL_dv, dL_dparams, dL_dx, workspace, stream);
    }

    void divergence(TensorView<const T> x, TensorView<const T> t, TensorView<T> v,
                    TensorView<T> div, TensorView<unsigned char> workspace,
                    Stream stream = nullptr) {
        check_batch(x, t, "divergence");
        if (v.defined()) check_out(v, x.shape, "v");
        check_out(div, Shape{x.size(0)}, "div");
        check_workspace(workspace, FieldOp::divergence, x.size(0), 0);
        if (x.size(0) > 0) do_divergence(x, t, v, div, workspace, stream);
    }

    void jvp_trace(TensorView<const T> x, TensorView<const T> t, TensorView<const T> dirs,
                   TensorView<T> v, TensorView<T> trace, TensorView<unsigned char> workspace,
                   Stream stream = nullptr) {
        check_batch(x, t, "jvp_trace");
        EQFLOW_CHECK(dirs.rank() == 4 && dirs.size(0) == x.size(0) && dirs.size(1) >= 1 &&
                         dirs.size(1) <= (1 << 20) && dirs.size(2) == n_ && dirs.size(3) == d_,
                     "jvp_trace: dirs has shape " << shape_string(dirs.shape) << ", expected ["
                                                  << x.size(0) << ", K, " << n_ << ", " << d_
                                                  << "] with 1 <= K <= 2^20");
        check_in(dirs, dirs.shape, "dirs");
        if (v.defined()) check_out(v, x.shape, "v");
        check_out(trace, Shape{x.size(0)}, "trace");
        const int K = static_cast<int>(dirs.size(1));
        check_workspace(workspace, FieldOp::jvp_trace, x.size(0), K);
        if (x.size(0) > 0) do_jvp_trace(x, t, dirs, v, trace, workspace, stream);
    }

    // Reverse mode of the exact divergence for an upstream gradient dL_ddiv [B] (see above).
    void divergence_backward(TensorView<const T> x, TensorView<const T> t,
                             TensorView<const T> dL_ddiv, TensorView<T> dL_dparams,
                             TensorView<T> dL_dx, TensorView<unsigned char> workspace,
                             Stream stream = nullptr) {
        check_batch(x, t, "divergence_backward");
        EQFLOW_CHECK(supports_divergence_backward(),
                     "divergence_backward: this backend has no second derivatives (likelihood "
                     "training needs them; use a backend that has, e.g. --reference)");
        check_in(dL_ddiv, Shape{x.size(0)}, "dL_ddiv");
        check_out(dL_dparams, Shape{parameter_count_}, "dL_dparams");
        if (dL_dx.defined()) check_out(dL_dx, x.shape, "dL_dx");
        check_workspace(workspace, FieldOp::divergence_backward, x.size(0), 0);
        if (x.size(0) > 0)
            do_divergence_backward(x, t, dL_ddiv, dL_dparams, dL_dx, workspace, stream);
    }
    // Whether divergence_backward is implemented by this backend.
    virtual bool supports_divergence_backward() const { return false; }

  protected:
    Field(int n, int d, int64_t parameter_count, Device device)
        : n_(n), d_(d), parameter_count_(parameter_count), device_(device) {}

    virtual TensorView<T> do_parameters() = 0;
    virtual std::vector<double> do_parameters_to_host() const = 0;
    virtual void do_set_parameters(const std::vector<double>& params) = 0;
    virtual size_t do_workspace_bytes(FieldOp op, int64_t B, int K) const = 0;
    virtual void do_forward(TensorView<const T> x, TensorView<const T> t, TensorView<T> v,
                            TensorView<unsigned char> ws, Stream stream) = 0;
    virtual void do_backward(TensorView<const T> x, TensorView<const T> t,
                             TensorView<const T> dL_dv, TensorView<T> dL_dparams,
                             TensorView<T> dL_dx, TensorView<unsigned char> ws, Stream stream) = 0;
    virtual void do_divergence(TensorView<const T> x, TensorView<const T> t, TensorView<T> v,
                               TensorView<T> div, TensorView<unsigned char> ws, Stream stream) = 0;
    virtual void do_jvp_trace(TensorView<const T> x, TensorView<const T> t,
                              TensorView<const T> dirs, TensorView<T> v, TensorView<T> trace,
                              TensorView<unsigned char> ws, Stream stream) = 0;
    // The combined forward and backward. Default: forward, grad(0, B), backward, in one workspace
    // of do_forward_backward_workspace_bytes(B) bytes (the larger of the two). A backend that
    // overrides it overrides the size too.
    virtual void do_forward_backward(TensorView<const T> x, TensorView<const T> t, TensorView<T> v,
                                     const OutputGradient& grad, TensorView<T> dL_dv,
                                     TensorView<T> dL_dparams, TensorView<T> dL_dx,
                                     TensorView<unsigned char> ws, Stream stream) {
        do_forward(x, t, v, ws, stream);
        grad(0, x.size(0));
        do_backward(x, t, dL_dv, dL_dparams, dL_dx, ws, stream);
    }
    virtual size_t do_forward_backward_workspace_bytes(int64_t B) const {
        return std::max(do_workspace_bytes(FieldOp::forward, B, 0),
                        do_workspace_bytes(FieldOp::backward, B, 0));
    }
    // Backends with second derivatives override this and supports_divergence_backward().
    virtual void do_divergence_backward(TensorView<const T>, TensorView<const T>,
                                        TensorView<const T>, TensorView<T>, TensorView<T>,
                                        TensorView<unsigned char>, Stream) {
        EQFLOW_THROW("divergence_backward is not implemented by this backend");
    }

  private:
    template <class U>
    void check_device(const TensorView<U>& a, const char* name) const {
        EQFLOW_CHECK(a.device == device_, name << " is in " << device_name(a.device)
                                               << " memory, the field computes on "
                                               << device_name(device_));
    }
    void check_batch(const TensorView<const T>& x, const TensorView<const T>& t,
                     const char* what) const {
        EQFLOW_CHECK(x.rank() == 3 && x.size(1) == n_ && x.size(2) == d_,
                     what << ": x has shape " << shape_string(x.shape) << ", expected [B, " << n_
                          << ", " << d_ << "]");
        check_in(x, x.shape, "x");
        check_in(t, Shape{x.size(0)}, "t");
    }
    void check_in(const TensorView<const T>& a, const Shape& shape, const char* name) const {
        check_shape(a, shape, name);
        check_device(a, name);
    }
    void check_out(const TensorView<T>& a, const Shape& shape, const char* name) const {
        check_shape(a, shape, name);
        check_device(a, name);
    }
    size_t need_bytes(FieldOp op, int64_t B, int K) const {
        return op == FieldOp::forward_backward ? do_forward_backward_workspace_bytes(B)
                                               : do_workspace_bytes(op, B, K);
    }
    void check_workspace(const TensorView<unsigned char>& ws, FieldOp op, int64_t B, int K) const {
        const size_t need = need_bytes(op, B, K);
        if (need == 0) return;
        EQFLOW_CHECK(ws.data != nullptr && static_cast<size_t>(ws.numel()) >= need,
                     field_op_name(op) << ": the workspace holds " << ws.numel() << " bytes, "
                                       << need << " needed for " << B << " rows");
        check_device(ws, "the workspace");
    }

    int n_, d_;
    int64_t parameter_count_;
    Device device_;
};

// Grow-only scratch memory for a caller of one field: get() returns a view of at least
// workspace_bytes(op, B, K) bytes, allocating only when that is more than it holds.
class FieldWorkspace {
  public:
    template <class T>
    TensorView<unsigned char> get(const Field<T>& field, FieldOp op, int64_t B, int K = 0) {
        return get_bytes(field.workspace_bytes(op, B, K), field.device());
    }
    TensorView<unsigned char> get_bytes(size_t bytes, Device device) {
        if (buffer_.size() < bytes || buffer_.device() != device)
            buffer_ = Buffer<unsigned char>(std::max(bytes, buffer_.size()), device);
        return TensorView<unsigned char>(buffer_.data(), Shape{static_cast<int64_t>(bytes)},
                                         device);
    }

  private:
    Buffer<unsigned char> buffer_;
};

}  // namespace eqflow
