// kernels/kabsch.cuh: batched Kabsch alignment on the GPU (see eqflow/kabsch.h).
#pragma once

#include <cstdint>

#include "eqflow/device.h"

namespace eqflow::cuda {

// x, y [B][n][d] (device) -> rotation [B][d][d], cost [B], aligned [B][n][d] (each nullable).
template <class T>
void kabsch(const T* x, const T* y, int64_t B, int n, int d, bool allow_reflection, T* rotation,
            T* cost, T* aligned, Stream stream);

}  // namespace eqflow::cuda
