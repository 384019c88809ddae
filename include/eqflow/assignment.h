// eqflow/assignment.h: exact linear sum assignment (the "Hungarian" problem) for batches of small
// square cost matrices, on the CPU and the GPU.
//
//   cost  [P][n][n]  float or double, row-major; cost[p][i][j] = price of giving column j to row i
//   perm  [P][n]     int64: perm[p][i] = the column assigned to row i (a permutation of 0..n-1)
//   total [P]        double: sum_i cost[p][i][perm[p][i]], summed in double in row order
//   status [P]       int32 AssignmentStatus (optional)
//
// The solver minimises the total exactly (up to the rounding of the dual potentials, which are
// double on both backends; integer-valued costs below 2^53 / n give the exact optimum). Ties and
// duplicate rows are fine; the permutation returned among several optimal ones is unspecified
// and may differ between the backends -- the optimal total does not.
//
// Special values:
//   NaN   anywhere in a problem is an Error (both backends), naming the first such problem.
//   +inf  marks a forbidden pairing. A problem whose every permutation uses a forbidden pair is
//         infeasible: with a `status` view it is reported there (status = infeasible, its perm
//         row all -1, its total +inf) and the call succeeds; without one the call throws an
//         Error naming the first infeasible problem.
//   -inf  is an Error (the minimum would be unbounded).
//
// Algorithm: shortest augmenting paths with dual potentials (Jonker-Volgenant family), one row
// at a time, O(n^3) worst case, exact for any n. CPU: a plain sequential loop per problem, after
// Jonker-Volgenant's column and row reductions have matched the rows they can (no search); the
// problems are spread over the thread pool (OMP_NUM_THREADS / the affinity mask) in chunks, and
// n <= 32 runs a fixed-size copy of the solver with the same steps and tie rules (same result).
// CUDA: one warp per problem, all problems in one launch; the matrix is staged in shared memory
// when it fits (n <= ~64 float / ~48 double at the default budget) and read through the cache
// otherwise; the per-step column scan and argmin are spread over the warp's lanes. A few large
// problems (n >= 128, no more problems than the GPU has SMs) get a block of 256 threads each
// instead, with the same result bit for bit. GPU n <= 1024.
//
// Workspace (CUDA path only): the caller passes `assignment_workspace_bytes(Device::cuda, P, n)`
// bytes of device memory; nothing is allocated inside the call. The CPU path needs none (pass
// nullptr). The CUDA call synchronises the stream once at the end to read back the NaN /
// infeasibility flags, so the results are ready on return.
#pragma once

#include <cstddef>
#include <cstdint>

#include "eqflow/device.h"
#include "eqflow/export.h"
#include "eqflow/tensor.h"

namespace eqflow {

enum class AssignmentStatus : int32_t { ok = 0, infeasible = 1 };

// Bytes of workspace the call needs for P problems of size n on `device` (0 on the CPU).
EQFLOW_API std::size_t assignment_workspace_bytes(Device device, int64_t P, int64_t n);

// Largest n the CUDA solver accepts.
constexpr int64_t kAssignmentMaxGpuN = 1024;

// Batched assignment. `cost` is [P][n][n] (or [n][n], read as P = 1, with perm [n] and total [1]
// or a scalar-shaped [] view); `total` and `status` may be undefined views to skip them. All views
// live on the same device.
EQFLOW_API void linear_sum_assignment(TensorView<const double> cost, TensorView<int64_t> perm,
                                      TensorView<double> total = {},
                                      TensorView<int32_t> status = {}, void* workspace = nullptr,
                                      std::size_t workspace_bytes = 0, Stream stream = nullptr);
EQFLOW_API void linear_sum_assignment(TensorView<const float> cost, TensorView<int64_t> perm,
                                      TensorView<double> total = {},
                                      TensorView<int32_t> status = {}, void* workspace = nullptr,
                                      std::size_t workspace_bytes = 0, Stream stream = nullptr);

// One problem on the host, for callers with a plain array: cost [n][n] row-major, perm [n].
// Returns the optimal total; throws on NaN / -inf and when the problem is infeasible.
EQFLOW_API double linear_sum_assignment_host(const double* cost, int64_t n, int64_t* perm);

}  // namespace eqflow
