// eqflow/npy.h: NumPy .npy files (format versions 1.0, 2.0 and 3.0).
//
// Reading accepts little- or big-endian float32, float64, int32 and int64 in C order and
// returns the values as double (int64 values above 2^53 are refused). Anything else -- wrong
// magic, a truncated header or body, Fortran order, another dtype, a malformed header -- is an
// Error with a one-line message naming the file and the problem; the reader never reads past
// what the file holds. Writers are atomic (see io.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "eqflow/export.h"
#include "eqflow/tensor.h"

namespace eqflow {

enum class NpyDtype { f32, f64, i32, i64 };

struct NpyArray {
    Shape shape;
    NpyDtype dtype = NpyDtype::f64;
    std::vector<double> values;  // numel(shape) values, C order
};

EQFLOW_API NpyArray read_npy(const std::string& path);
// The same from the bytes of a file; `what` names it in errors.
EQFLOW_API NpyArray parse_npy(const std::string& bytes, const std::string& what);

// Writes a C-order array; `values` holds shape_numel(shape) numbers, converted to `dtype`.
EQFLOW_API void write_npy(const std::string& path, const double* values, const Shape& shape,
                          NpyDtype dtype = NpyDtype::f64);
EQFLOW_API void write_npy(const std::string& path, const float* values, const Shape& shape);
EQFLOW_API void write_npy(const std::string& path, const int64_t* values, const Shape& shape);

// Configurations of n particles in d dimensions from a file of shape [N, n*d] or [N, n, d]:
// checks the shape against the system, rejects NaN/Inf, and (when `center`) removes each
// configuration's centre of mass. Returns [N][n][d] values; `count` receives N.
EQFLOW_API std::vector<double> load_configurations(const std::string& path, int n, int d,
                                                   int64_t* count, bool center = true);

// Saves [N][n][d] configurations as [N, n*d] (docs/design.md section 2).
EQFLOW_API void save_configurations(const std::string& path, const std::vector<double>& x,
                                    int64_t count, int n, int d, NpyDtype dtype = NpyDtype::f64);

}  // namespace eqflow
