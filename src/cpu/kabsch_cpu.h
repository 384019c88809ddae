// src/cpu/kabsch_cpu.h: the batched Kabsch alignment on the CPU reference path; the math is
// src/common/kabsch_math.h, shared with the CUDA kernels.
#pragma once

#include <cstdint>

#include "common/kabsch_math.h"

namespace eqflow::cpu {

// x, y [B][n][d] (T = float or double, computed in double) -> rotation [B][d][d], cost [B] =
// sum_i |y_i - R x_i|^2, aligned [B][n][d] = R x; each output nullable.
template <class T>
void kabsch(const T* x, const T* y, int64_t B, int n, int d, bool allow_reflection, T* rotation,
            T* cost, T* aligned);

}  // namespace eqflow::cpu
