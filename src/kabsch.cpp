// Kabsch alignment: argument checks, then dispatch on where the data lives.
#include "eqflow/kabsch.h"

#include "cpu/kabsch_cpu.h"
#include "eqflow/error.h"

#if defined(EQFLOW_HAVE_CUDA)
#include "kernels/kabsch.cuh"
#endif

namespace eqflow {

namespace {
template <class T>
void kabsch_impl(TensorView<const T> x, TensorView<const T> y, TensorView<T> rotation,
                 TensorView<T> cost, TensorView<T> aligned, bool allow_reflection, Stream stream) {
    EQFLOW_CHECK(x.rank() == 3,
                 "kabsch: x has shape " << shape_string(x.shape) << ", expected [B, n, d]");
    const int64_t B = x.size(0), n = x.size(1), d = x.size(2);
    EQFLOW_CHECK(d == 2 || d == 3, "kabsch: d must be 2 or 3, got " << d);
    check_shape(x, Shape{B, n, d}, "kabsch x");
    check_shape(y, Shape{B, n, d}, "kabsch y");
    EQFLOW_CHECK(y.device == x.device, "kabsch: x and y live on different devices");
    if (rotation.defined()) {
        check_shape(rotation, Shape{B, d, d}, "kabsch rotation");
        EQFLOW_CHECK(rotation.device == x.device,
                     "kabsch: rotation and x live on different devices");
    }
    if (cost.defined()) {
        check_shape(cost, Shape{B}, "kabsch cost");
        EQFLOW_CHECK(cost.device == x.device, "kabsch: cost and x live on different devices");
    }
    if (aligned.defined()) {
        check_shape(aligned, Shape{B, n, d}, "kabsch aligned");
        EQFLOW_CHECK(aligned.device == x.device, "kabsch: aligned and x live on different devices");
    }
    if (B == 0) return;
    T* r = rotation.defined() ? rotation.data : nullptr;
    T* c = cost.defined() ? cost.data : nullptr;
    T* a = aligned.defined() ? aligned.data : nullptr;
    if (x.device == Device::cpu) {
        cpu::kabsch(x.data, y.data, B, static_cast<int>(n), static_cast<int>(d), allow_reflection,
                    r, c, a);
        return;
    }
#if defined(EQFLOW_HAVE_CUDA)
    cuda::kabsch(x.data, y.data, B, static_cast<int>(n), static_cast<int>(d), allow_reflection, r,
                 c, a, stream);
#else
    (void)stream;
    EQFLOW_THROW("kabsch on the GPU: eqflow was built without CUDA");
#endif
}
}  // namespace

void kabsch(TensorView<const double> x, TensorView<const double> y, TensorView<double> rotation,
            TensorView<double> cost, TensorView<double> aligned, bool allow_reflection,
            Stream stream) {
    kabsch_impl<double>(x, y, rotation, cost, aligned, allow_reflection, stream);
}
void kabsch(TensorView<const float> x, TensorView<const float> y, TensorView<float> rotation,
            TensorView<float> cost, TensorView<float> aligned, bool allow_reflection,
            Stream stream) {
    kabsch_impl<float>(x, y, rotation, cost, aligned, allow_reflection, stream);
}

}  // namespace eqflow
