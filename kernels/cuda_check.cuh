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

namespace eqflow::cuda {
// The current device's attributes the launchers size their grids and shared memory by, queried
// once per device and cached (cudaGetDevice is a cheap thread-local read; the attributes are not).
struct DeviceInfo {
    int device = 0;
    int sms = 1;                // multiprocessors
    size_t max_smem_optin = 0;  // dynamic shared memory a block may opt in to, bytes
};
const DeviceInfo& current_device_info();

// Raises `kernel`'s dynamic shared-memory limit to `bytes` on the current device, calling
// cudaFuncSetAttribute only the first time a larger limit is needed there.
void raise_smem_limit(const void* kernel, size_t bytes);
}  // namespace eqflow::cuda

// EQFLOW_CUDA_CHECK(call): for cudaError_t and cublasStatus_t alike.
#define EQFLOW_CUDA_CHECK(call) ::eqflow::cuda_detail::check((call), #call, __FILE__, __LINE__)

// After every kernel launch: catches bad launch configurations at once.
#define EQFLOW_CUDA_CHECK_LAUNCH() EQFLOW_CUDA_CHECK(cudaGetLastError())

// Converts the opaque public stream handle.
#define EQFLOW_STREAM(s) (reinterpret_cast<cudaStream_t>(s))
