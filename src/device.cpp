#include "eqflow/device.h"

#include <mutex>
#include <sstream>

#include "eqflow/error.h"

#if defined(EQFLOW_HAVE_CUDA)
#include "kernels/cuda_check.cuh"
#endif

namespace eqflow {

const char* device_name(Device device) {
    return device == Device::cuda ? "cuda" : "cpu";
}

bool cuda_compiled() {
#if defined(EQFLOW_HAVE_CUDA)
    return true;
#else
    return false;
#endif
}

namespace {
struct CudaProbe {
    bool available = false;
    std::string status;
};

const CudaProbe& probe() {
    static CudaProbe result;
    static std::once_flag once;
    std::call_once(once, [] {
#if defined(EQFLOW_HAVE_CUDA)
        int count = 0;
        const cudaError_t err = cudaGetDeviceCount(&count);
        if (err != cudaSuccess) {
            cudaGetLastError();
            result.status = std::string("no CUDA device: ") + cudaGetErrorString(err);
            return;
        }
        if (count == 0) {
            result.status = "no CUDA device: the runtime found none";
            return;
        }
        cudaDeviceProp prop{};
        if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
            cudaGetLastError();
            result.status = "no CUDA device: device 0 did not answer";
            return;
        }
        std::ostringstream oss;
        oss.setf(std::ios::fixed);
        oss.precision(1);
        oss << prop.name << " (sm_" << prop.major << prop.minor << ", "
            << static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0) << " GiB)";
        result.status = oss.str();
        result.available = true;
#else
        result.status = "eqflow was built without CUDA (CPU reference path only)";
#endif
    });
    return result;
}
}  // namespace

bool cuda_available() {
    return probe().available;
}

std::string cuda_status() {
    return probe().status;
}

Device default_device() {
#if defined(EQFLOW_CUDA_EMULATION)
    return Device::cpu;  // the CPU emulator of the GPU is for tests, never the default device
#else
    return cuda_available() ? Device::cuda : Device::cpu;
#endif
}

Device parse_device(const std::string& name) {
    if (name == "cpu") return Device::cpu;
    if (name == "auto" || name.empty()) return default_device();
    if (name == "cuda" || name == "gpu") {
        EQFLOW_CHECK(cuda_available(), "--device cuda asked for, but " << cuda_status());
        return Device::cuda;
    }
    EQFLOW_THROW("unknown device '" << name << "' (expected cpu, cuda or auto)");
}

void synchronize(Stream stream) {
#if defined(EQFLOW_HAVE_CUDA)
    if (cuda_available()) EQFLOW_CUDA_CHECK(cudaStreamSynchronize(EQFLOW_STREAM(stream)));
#else
    (void)stream;
#endif
}

}  // namespace eqflow
