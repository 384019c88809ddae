#include "kernels/cuda_check.cuh"

#include <map>
#include <mutex>
#include <sstream>
#include <utility>

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

namespace eqflow::cuda {

namespace {
std::mutex& info_mutex() {
    static std::mutex m;
    return m;
}
}  // namespace

const DeviceInfo& current_device_info() {
    int device = 0;
    EQFLOW_CUDA_CHECK(cudaGetDevice(&device));
    std::lock_guard<std::mutex> lock(info_mutex());
    // Never destroyed: launchers may run during static destruction.
    static auto* cache = new std::map<int, DeviceInfo>();
    auto it = cache->find(device);
    if (it == cache->end()) {
        DeviceInfo info;
        info.device = device;
        int sms = 1, optin = 0;
        EQFLOW_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
        EQFLOW_CUDA_CHECK(
            cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
        info.sms = sms;
        info.max_smem_optin = static_cast<size_t>(optin);
        it = cache->emplace(device, info).first;
    }
    return it->second;
}

void raise_smem_limit(const void* kernel, size_t bytes) {
    const int device = current_device_info().device;
    std::lock_guard<std::mutex> lock(info_mutex());
    static auto* limits = new std::map<std::pair<int, const void*>, size_t>();
    size_t& current = (*limits)[{device, kernel}];
    if (bytes <= current) return;
    EQFLOW_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(bytes)));
    current = bytes;
}

}  // namespace eqflow::cuda
