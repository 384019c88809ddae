// eqflow/random.h: batched Philox draws on either backend, bit-identical between them.
//
// Row r of the output (r = i / per_row) is the sequential stream Philox(seed, first_stream + r):
// element i takes draw number (i % per_row) of that stream. A job that gives each sample its own
// stream id therefore draws the same numbers on the CPU and on the GPU.
#pragma once

#include <cstdint>

#include "eqflow/export.h"
#include "eqflow/tensor.h"

namespace eqflow {

EQFLOW_API void fill_normal(TensorView<double> out, int64_t per_row, uint64_t seed,
                            uint64_t first_stream, Stream stream = nullptr);
EQFLOW_API void fill_uniform(TensorView<double> out, int64_t per_row, uint64_t seed,
                             uint64_t first_stream, Stream stream = nullptr);

}  // namespace eqflow
