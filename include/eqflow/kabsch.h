// eqflow/kabsch.h: batched Kabsch alignment in 2D and 3D, on the CPU and the GPU.
//
//   x         [B][n][d]  the mobile configurations (float or double)
//   y         [B][n][d]  the targets
//   rotation  [B][d][d]  R minimising sum_i |y_i - R x_i|^2 (row-major; apply as R x)
//   cost      [B]        the aligned squared distance sum_i |y_i - R x_i|^2
//   aligned   [B][n][d]  R x_i
//
// Rotation about the origin, no translation: the flow's configurations are centred (docs/design.md
// section 2); centre both inputs first if yours are not. R is a proper rotation (R^T R = I,
// det R = +1) unless `allow_reflection`, which returns the best orthogonal matrix (det -1 only when
// that is strictly better). Degenerate inputs (collinear or coincident particles, all zeros)
// still give a proper rotation and a finite cost. Computed in double on both backends (float
// inputs are widened); outputs are converted to the input type. Any output may be an undefined
// view to skip it; d must be 2 or 3.
#pragma once

#include "eqflow/device.h"
#include "eqflow/export.h"
#include "eqflow/tensor.h"

namespace eqflow {

EQFLOW_API void kabsch(TensorView<const double> x, TensorView<const double> y,
                       TensorView<double> rotation, TensorView<double> cost = {},
                       TensorView<double> aligned = {}, bool allow_reflection = false,
                       Stream stream = nullptr);
EQFLOW_API void kabsch(TensorView<const float> x, TensorView<const float> y,
                       TensorView<float> rotation, TensorView<float> cost = {},
                       TensorView<float> aligned = {}, bool allow_reflection = false,
                       Stream stream = nullptr);

}  // namespace eqflow
