// kernels/cuda_check.cuh: the one checking macro for CUDA runtime and cuBLAS calls.
//
// Includable from host C++ (it needs only the runtime API header). A failure throws
// eqflow::Error with the call, file:line, the device and the runtime's message.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "eqflow/error.h"

namespace eqflow::cuda_detail {
[[noreturn]] void throw_cuda_error(cudaError_t err, const char* call, const char* file, int line);
[[noreturn]] void throw_cublas_error(cublasStatus_t st, const char* call, const char* file,
                                     int line);

inline void check(cudaError_t err, const char* call, const char* file, int line) {
    if (err != cudaSuccess) throw_cuda_error(err, call, file, line);
}
inline void check(cublasStatus_t st, const char* call, const char* file, int line) {
    if (st != CUBLAS_STATUS_SUCCESS) throw_cublas_error(st, call, file, line);
}
}  // namespace eqflow::cuda_detail

// EQFLOW_CUDA_CHECK(call): for cudaError_t and cublasStatus_t alike.
#define EQFLOW_CUDA_CHECK(call) ::eqflow::cuda_detail::check((call), #call, __FILE__, __LINE__)

// After every kernel launch: catches bad launch configurations at once.
#define EQFLOW_CUDA_CHECK_LAUNCH() EQFLOW_CUDA_CHECK(cudaGetLastError())

// Converts the opaque public stream handle.
#define EQFLOW_STREAM(s) (reinterpret_cast<cudaStream_t>(s))
