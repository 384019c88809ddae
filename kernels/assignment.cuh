// kernels/assignment.cuh: batched linear sum assignment on the GPU (see eqflow/assignment.h).
#pragma once

#include <cstddef>
#include <cstdint>

#include "eqflow/device.h"

namespace eqflow::cuda {

// Device workspace of one call: two 64-bit flags (first invalid / first infeasible problem).
std::size_t assignment_workspace_bytes(int64_t P, int64_t n);

// cost [P][n][n] (device) -> perm [P][n] int64, total [P] (nullable), status [P] (nullable).
// On return (the stream is synchronised): *first_invalid = index of the first problem holding a
// NaN / -inf (or -1), *first_infeasible = index of the first infeasible problem (or -1).
template <class T>
void linear_sum_assignment(const T* cost, int64_t P, int64_t n, int64_t* perm, double* total,
                           int32_t* status, void* workspace, std::size_t workspace_bytes,
                           Stream stream, int64_t* first_invalid, int64_t* first_infeasible);

// The same, queued on `stream` without waiting for it: the two flags stay in the workspace
// (device memory, returned), UINT64_MAX each when every problem was valid and feasible. For a
// problem that was not, perm is unspecified (an infeasible problem's is -1; an invalid one's is
// not written): a consumer must read the flags before trusting perm.
template <class T>
const unsigned long long* linear_sum_assignment_async(const T* cost, int64_t P, int64_t n,
                                                      int64_t* perm, double* total, int32_t* status,
                                                      void* workspace, std::size_t workspace_bytes,
                                                      Stream stream);

}  // namespace eqflow::cuda
