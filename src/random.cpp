#include "eqflow/random.h"

#include "eqflow/philox.h"

#if defined(EQFLOW_HAVE_CUDA)
#include "kernels/philox_fill.cuh"
#endif

namespace eqflow {

namespace {
void fill(TensorView<double> out, int64_t per_row, uint64_t seed, uint64_t first_stream,
          bool normal, Stream stream) {
    const int64_t count = out.numel();
    EQFLOW_CHECK(per_row > 0, "random fill: per_row must be positive, got " << per_row);
    EQFLOW_CHECK(count % per_row == 0,
                 "random fill: " << count << " elements are not rows of " << per_row);
    if (count == 0) return;
    EQFLOW_CHECK(out.data != nullptr, "random fill: output has no data");
    if (out.device == Device::cpu) {
        for (int64_t r = 0; r < count / per_row; ++r) {
            Philox gen(seed, first_stream + static_cast<uint64_t>(r));
            for (int64_t k = 0; k < per_row; ++k)
                out.data[r * per_row + k] = normal ? gen.normal() : gen.uniform();
        }
        return;
    }
#if defined(EQFLOW_HAVE_CUDA)
    cuda::philox_fill(out.data, count / per_row, per_row, seed, first_stream, normal, stream);
#else
    (void)stream;
    EQFLOW_THROW("random fill on the GPU: eqflow was built without CUDA");
#endif
}
}  // namespace

void fill_normal(TensorView<double> out, int64_t per_row, uint64_t seed, uint64_t first_stream,
                 Stream stream) {
    fill(out, per_row, seed, first_stream, true, stream);
}

void fill_uniform(TensorView<double> out, int64_t per_row, uint64_t seed, uint64_t first_stream,
                  Stream stream) {
    fill(out, per_row, seed, first_stream, false, stream);
}

}  // namespace eqflow
