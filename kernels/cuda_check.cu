#include "kernels/cuda_check.cuh"

#include <sstream>

namespace eqflow::cuda_detail {

namespace {
std::string device_description() {
    int dev = -1;
    if (cudaGetDevice(&dev) != cudaSuccess) {
        cudaGetLastError();  // clear the sticky-free error state left by the failed query
        return "device ?";
    }
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
        cudaGetLastError();
        return "device " + std::to_string(dev);
    }
    std::ostringstream oss;
    oss << "device " << dev << " " << prop.name;
    return oss.str();
}
}  // namespace

void throw_cuda_error(cudaError_t err, const char* call, const char* file, int line) {
    std::ostringstream oss;
    oss << "CUDA error " << cudaGetErrorName(err) << " (" << cudaGetErrorString(err) << ") in "
        << call << " on " << device_description();
    detail::throw_error(oss.str(), file, line);
}

void throw_cublas_error(cublasStatus_t st, const char* call, const char* file, int line) {
    std::ostringstream oss;
    oss << "cuBLAS error " << cublasGetStatusName(st) << " (" << cublasGetStatusString(st)
        << ") in " << call << " on " << device_description();
    detail::throw_error(oss.str(), file, line);
}

}  // namespace eqflow::cuda_detail
