#include "eqflow/buffer.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>

#if defined(EQFLOW_HAVE_CUDA)
#include "kernels/cuda_check.cuh"
#endif

namespace eqflow::detail {

namespace {
constexpr std::size_t kHostAlignment = 64;
// Successful device allocations of this process (a statistic for tests, not a handle).
std::atomic<std::size_t> g_device_allocations{0};

[[maybe_unused]] void require_cuda(const char* what) {
    EQFLOW_CHECK(cuda_available(), what << " needs the GPU, but " << cuda_status());
}
}  // namespace

void* allocate_bytes(std::size_t bytes, Device device) {
    if (bytes == 0) return nullptr;
    if (device == Device::cpu) {
        const std::size_t rounded = (bytes + kHostAlignment - 1) / kHostAlignment * kHostAlignment;
        void* p = std::aligned_alloc(kHostAlignment, rounded);
        EQFLOW_CHECK(p != nullptr, "out of host memory allocating " << bytes << " bytes");
        return p;
    }
#if defined(EQFLOW_HAVE_CUDA)
    require_cuda("device allocation");
    void* p = nullptr;
    EQFLOW_CUDA_CHECK(cudaMalloc(&p, bytes));
    g_device_allocations.fetch_add(1, std::memory_order_relaxed);
    return p;
#else
    EQFLOW_THROW("device allocation of " << bytes << " bytes: eqflow was built without CUDA");
#endif
}

std::size_t device_allocation_count() {
    return g_device_allocations.load(std::memory_order_relaxed);
}

void free_bytes(void* ptr, Device device) noexcept {
    if (ptr == nullptr) return;
    if (device == Device::cpu) {
        std::free(ptr);
        return;
    }
#if defined(EQFLOW_HAVE_CUDA)
    // Destructors never throw: a failure here is reported and otherwise ignored.
    const cudaError_t err = cudaFree(ptr);
    if (err != cudaSuccess && err != cudaErrorCudartUnloading) {
        std::fprintf(stderr, "eqflow: cudaFree failed: %s\n", cudaGetErrorString(err));
    }
#endif
}

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, std::size_t bytes,
                Stream stream) {
    if (bytes == 0) return;
    EQFLOW_CHECK(dst != nullptr && src != nullptr,
                 "copy of " << bytes << " bytes with a null pointer");
    if (dst_device == Device::cpu && src_device == Device::cpu) {
        std::memmove(dst, src, bytes);
        return;
    }
#if defined(EQFLOW_HAVE_CUDA)
    const cudaStream_t s = EQFLOW_STREAM(stream);
    const cudaMemcpyKind kind = dst_device == Device::cpu   ? cudaMemcpyDeviceToHost
                                : src_device == Device::cpu ? cudaMemcpyHostToDevice
                                                            : cudaMemcpyDeviceToDevice;
    EQFLOW_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, s));
    if (kind != cudaMemcpyDeviceToDevice) EQFLOW_CUDA_CHECK(cudaStreamSynchronize(s));
#else
    (void)stream;
    EQFLOW_THROW("device copy: eqflow was built without CUDA");
#endif
}

void zero_bytes(void* ptr, Device device, std::size_t bytes, Stream stream) {
    if (bytes == 0 || ptr == nullptr) return;
    if (device == Device::cpu) {
        std::memset(ptr, 0, bytes);
        return;
    }
#if defined(EQFLOW_HAVE_CUDA)
    EQFLOW_CUDA_CHECK(cudaMemsetAsync(ptr, 0, bytes, EQFLOW_STREAM(stream)));
#else
    (void)stream;
    EQFLOW_THROW("device memset: eqflow was built without CUDA");
#endif
}

}  // namespace eqflow::detail
