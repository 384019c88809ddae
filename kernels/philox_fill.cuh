// kernels/philox_fill.cuh: batched Philox draws on the GPU (see eqflow/random.h).
#pragma once

#include <cstdint>

#include "eqflow/device.h"

namespace eqflow::cuda {

// out [rows][per_row]: row r is the sequential stream Philox(seed, first_stream + r).
void philox_fill(double* out, int64_t rows, int64_t per_row, uint64_t seed, uint64_t first_stream,
                 bool normal, Stream stream);

}  // namespace eqflow::cuda
