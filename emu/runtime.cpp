// emu/runtime.cpp: the CUDA runtime subset of emu/include/cuda_runtime_api.h, on the CPU.
//
// The emulated device has the limits of an H200 (132 SMs, 227 KB of opt-in shared memory per
// block, 48 KB without opt-in), so the launchers' configuration logic takes the same branches
// it takes there. Its name says plainly that it is not a GPU.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cublas_v2.h"
#include "cuda_emu.h"
#include "cuda_runtime_api.h"

namespace {

constexpr int kSms = 132;
constexpr size_t kSmemDefault = 48 * 1024;
constexpr size_t kSmemOptin = 227 * 1024;
constexpr size_t kGlobalBytes = size_t{64} << 30;  // what the device reports; nothing reserves it
constexpr size_t kAlignment = 256;                 // cudaMalloc's alignment

std::mutex g_mutex;
cudaError_t g_last_error = cudaSuccess;
std::map<const void*, size_t> g_smem_limit;  // kernel -> max dynamic shared memory
std::map<void*, size_t> g_allocations;

cudaError_t fail(cudaError_t err) {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_last_error = err;
    return err;
}

// The runtime's name and message for each error the emulator returns.
struct ErrorText {
    cudaError_t error;
    const char* name;
    const char* message;
};

const ErrorText kErrorTexts[] = {
    {cudaSuccess, "cudaSuccess", "no error"},
    {cudaErrorInvalidValue, "cudaErrorInvalidValue",
     "invalid argument (emulator: a size or pointer outside its allocation, or dynamic shared "
     "memory above the kernel's limit)"},
    {cudaErrorMemoryAllocation, "cudaErrorMemoryAllocation", "out of memory"},
    {cudaErrorCudartUnloading, "cudaErrorCudartUnloading", "driver shutting down"},
    {cudaErrorInvalidConfiguration, "cudaErrorInvalidConfiguration",
     "invalid configuration argument"},
    {cudaErrorInvalidDevicePointer, "cudaErrorInvalidDevicePointer", "invalid device pointer"},
    {cudaErrorNoDevice, "cudaErrorNoDevice", "no CUDA-capable device is detected"},
    {cudaErrorLaunchFailure, "cudaErrorLaunchFailure", "unspecified launch failure"},
    {cudaErrorIllegalState, "cudaErrorIllegalState",
     "the operation cannot be performed in the present state"},
    {cudaErrorStreamCaptureUnsupported, "cudaErrorStreamCaptureUnsupported",
     "operation not permitted when stream is capturing"},
    {cudaErrorStreamCaptureInvalidated, "cudaErrorStreamCaptureInvalidated",
     "operation failed due to a previous error during capture"},
    {cudaErrorStreamCaptureUnmatched, "cudaErrorStreamCaptureUnmatched",
     "the capture was not initiated in this stream"},
    {cudaErrorStreamCaptureImplicit, "cudaErrorStreamCaptureImplicit",
     "operation would make the legacy stream depend on a capturing blocking stream"},
};

const ErrorText* find_error_text(cudaError_t error) {
    for (const ErrorText& text : kErrorTexts)
        if (text.error == error) return &text;
    return nullptr;
}

// Both ends of a copy or a memset must lie inside one live allocation when they are device
// memory; host memory is not tracked. A copy that runs past the end of a device allocation is
// an error on the device; here it is caught before it corrupts the heap.
bool inside_allocation(const void* ptr, size_t bytes) {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_allocations.upper_bound(const_cast<void*>(ptr));
    if (it == g_allocations.begin()) return false;
    --it;
    const char* base = static_cast<const char*>(it->first);
    const char* p = static_cast<const char*>(ptr);
    return p >= base && p + bytes <= base + it->second;
}

cudaError_t check_copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
    if (bytes == 0) return cudaSuccess;
    const bool dst_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    const bool src_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if (dst_device && !inside_allocation(dst, bytes)) return fail(cudaErrorInvalidValue);
    if (src_device && !inside_allocation(src, bytes)) return fail(cudaErrorInvalidValue);
    return cudaSuccess;
}

// The open stream capture (at most one). Guarded by g_capture_mutex, which is never held while
// work runs (a kernel's launch may itself issue runtime calls only through the launcher).
struct Capture {
    bool active = false;
    bool invalidated = false;
    cudaStream_t stream = nullptr;
    cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
    std::thread::id thread;  // the one that began it
    std::vector<std::function<void()>> nodes;
};
std::mutex g_capture_mutex;
Capture g_capture;

bool capturing_stream(const void* stream) {
    std::lock_guard<std::mutex> lock(g_capture_mutex);
    return g_capture.active && static_cast<const void*>(g_capture.stream) == stream;
}

// A synchronous call, or one that is not stream-ordered, while a capture is open: refused, and
// the capture is invalidated (the runtime's global capture mode).
// Which threads the open capture restricts: all (global mode), the capturing one (thread-local),
// none (relaxed).
bool restricts_this_thread(const Capture& c) {
    return c.active &&
           (c.mode == cudaStreamCaptureModeGlobal ||
            (c.mode == cudaStreamCaptureModeThreadLocal && c.thread == std::this_thread::get_id()));
}

cudaError_t refuse_in_capture() {
    {
        std::lock_guard<std::mutex> lock(g_capture_mutex);
        if (!restricts_this_thread(g_capture)) return cudaSuccess;
        g_capture.invalidated = true;
    }
    return fail(cudaErrorStreamCaptureUnsupported);
}

// Work on the capturing stream itself that capture cannot record, from any thread: refused, and
// the capture invalidated.
cudaError_t refuse_on_capturing_stream() {
    {
        std::lock_guard<std::mutex> lock(g_capture_mutex);
        g_capture.invalidated = true;
    }
    return fail(cudaErrorStreamCaptureUnsupported);
}

}  // namespace

struct CUstream_st {
    unsigned flags = 0;
};
struct CUgraph_st {
    std::vector<std::function<void()>> nodes;
};
struct CUgraphExec_st {
    std::vector<std::function<void()>> nodes;
};

namespace emu {

int enqueue(const void* stream, std::function<void()> work) {
    cudaError_t refused = cudaSuccess;
    {
        std::lock_guard<std::mutex> lock(g_capture_mutex);
        if (g_capture.active) {
            if (static_cast<const void*>(g_capture.stream) == stream) {
                if (!g_capture.invalidated) {
                    g_capture.nodes.push_back(std::move(work));
                    return cudaSuccess;
                }
                refused = cudaErrorStreamCaptureInvalidated;
            } else if (stream == nullptr && (g_capture.stream->flags == cudaStreamDefault ||
                                             g_capture.thread == std::this_thread::get_id())) {
                // The legacy stream would wait on a capturing blocking stream (the runtime's
                // error); stricter than the runtime, the capturing thread may not use the legacy
                // stream at all (work it issues there is outside the graph it is building).
                g_capture.invalidated = true;
                refused = cudaErrorStreamCaptureImplicit;
            }
        }
    }
    if (refused != cudaSuccess) return fail(refused);
    work();
    return cudaSuccess;
}

cudaError_t set_max_dynamic_smem(const void* kernel, int bytes) {
    if (bytes < 0 || static_cast<size_t>(bytes) > kSmemOptin) return fail(cudaErrorInvalidValue);
    std::lock_guard<std::mutex> lock(g_mutex);
    g_smem_limit[kernel] = static_cast<size_t>(bytes);
    return cudaSuccess;
}

bool check_launch(const void* kernel, long long grid, long long block, size_t dynamic_smem) {
    if (block < 1 || block > 1024 || grid < 1 || grid > 0x7fffffffLL) {
        fail(cudaErrorInvalidConfiguration);
        return false;
    }
    size_t limit = kSmemDefault;
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        auto it = g_smem_limit.find(kernel);
        if (it != g_smem_limit.end()) limit = std::max(limit, it->second);
    }
    if (dynamic_smem > limit) {
        fail(cudaErrorInvalidValue);
        return false;
    }
    return true;
}

Schedule default_schedule() {
    static const Schedule schedule = [] {
        const char* env = std::getenv("EQFLOW_EMU_SCHEDULE");
        const std::string s = env ? env : "";
        if (s == "reverse") return Schedule::reverse;
        if (s == "shuffled") return Schedule::shuffled;
        return Schedule::forward;
    }();
    return schedule;
}

}  // namespace emu

cudaError_t cudaGetDeviceCount(int* count) {
    *count = 1;
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
    *device = 0;
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
    return device == 0 ? cudaSuccess : fail(cudaErrorInvalidValue);
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
    if (device != 0) return fail(cudaErrorInvalidValue);
    *prop = cudaDeviceProp{};
    std::strncpy(prop->name, "eqflow CUDA emulator on the CPU (not a GPU)", sizeof prop->name - 1);
    prop->totalGlobalMem = kGlobalBytes;
    prop->sharedMemPerBlock = kSmemDefault;
    prop->sharedMemPerBlockOptin = kSmemOptin;
    prop->major = 9;
    prop->minor = 0;
    prop->multiProcessorCount = kSms;
    prop->warpSize = 32;
    prop->maxThreadsPerBlock = 1024;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
    if (device != 0) return fail(cudaErrorInvalidValue);
    switch (attr) {
        case cudaDevAttrMultiProcessorCount:
            *value = kSms;
            return cudaSuccess;
        case cudaDevAttrMaxSharedMemoryPerBlockOptin:
            *value = static_cast<int>(kSmemOptin);
            return cudaSuccess;
    }
    return fail(cudaErrorInvalidValue);
}

cudaError_t cudaMalloc(void** ptr, size_t bytes) {
    *ptr = nullptr;
    if (const cudaError_t err = refuse_in_capture(); err != cudaSuccess) return err;
    if (bytes == 0) return cudaSuccess;
    // Exactly the size asked for, so that AddressSanitizer sees an access past it.
    void* p = nullptr;
    if (posix_memalign(&p, kAlignment, bytes) != 0) return fail(cudaErrorMemoryAllocation);
    std::memset(p, 0xff, bytes);  // uninitialised device memory reads as NaN / -1
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        g_allocations[p] = bytes;  // the size asked for: a copy past it is an error
    }
    *ptr = p;
    return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
    if (ptr == nullptr) return cudaSuccess;
    if (const cudaError_t err = refuse_in_capture(); err != cudaSuccess) return err;
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        auto it = g_allocations.find(ptr);
        if (it == g_allocations.end()) {
            g_last_error = cudaErrorInvalidDevicePointer;
            return cudaErrorInvalidDevicePointer;
        }
        g_allocations.erase(it);
    }
    std::free(ptr);
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
    if (const cudaError_t err = refuse_in_capture(); err != cudaSuccess) return err;
    if (const cudaError_t err = check_copy(dst, src, bytes, kind); err != cudaSuccess) return err;
    if (bytes > 0) std::memmove(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream) {
    if (const cudaError_t err = check_copy(dst, src, bytes, kind); err != cudaSuccess) return err;
    if (bytes == 0) return cudaSuccess;
    if (kind != cudaMemcpyDeviceToDevice && capturing_stream(stream))
        return refuse_on_capturing_stream();
    return static_cast<cudaError_t>(emu::enqueue(stream, [=] { std::memmove(dst, src, bytes); }));
}

cudaError_t cudaMemset(void* ptr, int value, size_t bytes) {
    if (const cudaError_t err = refuse_in_capture(); err != cudaSuccess) return err;
    if (bytes == 0) return cudaSuccess;
    if (!inside_allocation(ptr, bytes)) return fail(cudaErrorInvalidValue);
    std::memset(ptr, value, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream) {
    if (bytes == 0) return cudaSuccess;
    if (!inside_allocation(ptr, bytes)) return fail(cudaErrorInvalidValue);
    return static_cast<cudaError_t>(emu::enqueue(stream, [=] { std::memset(ptr, value, bytes); }));
}

cudaError_t cudaStreamSynchronize(cudaStream_t) {
    return refuse_in_capture();
}

cudaError_t cudaDeviceSynchronize() {
    return refuse_in_capture();
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
    return cudaStreamCreateWithFlags(stream, cudaStreamDefault);
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags) {
    *stream = new CUstream_st{flags};
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    if (stream == nullptr) return fail(cudaErrorInvalidValue);
    if (capturing_stream(stream)) return fail(cudaErrorIllegalState);
    delete stream;
    return cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode) {
    if (stream == nullptr) return fail(cudaErrorStreamCaptureUnsupported);  // the legacy stream
    {
        std::lock_guard<std::mutex> lock(g_capture_mutex);
        if (!g_capture.active) {
            g_capture = Capture{};
            g_capture.active = true;
            g_capture.stream = stream;
            g_capture.mode = mode;
            g_capture.thread = std::this_thread::get_id();
            return cudaSuccess;
        }
    }
    return fail(cudaErrorIllegalState);  // the emulator has one capture at a time
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
    *graph = nullptr;
    Capture done;
    {
        std::lock_guard<std::mutex> lock(g_capture_mutex);
        if (!g_capture.active) return fail(cudaErrorIllegalState);
        if (g_capture.stream != stream) return fail(cudaErrorStreamCaptureUnmatched);
        done = std::move(g_capture);
        g_capture = Capture{};
    }
    if (done.invalidated) return fail(cudaErrorStreamCaptureInvalidated);
    *graph = new CUgraph_st{std::move(done.nodes)};
    return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status) {
    std::lock_guard<std::mutex> lock(g_capture_mutex);
    *status = !g_capture.active || g_capture.stream != stream ? cudaStreamCaptureStatusNone
              : g_capture.invalidated                         ? cudaStreamCaptureStatusInvalidated
                                                              : cudaStreamCaptureStatusActive;
    return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
    *exec = nullptr;
    if (graph == nullptr) return fail(cudaErrorInvalidValue);
    *exec = new CUgraphExec_st{graph->nodes};
    return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
    if (exec == nullptr) return fail(cudaErrorInvalidValue);
    return static_cast<cudaError_t>(emu::enqueue(stream, [exec] {
        for (const std::function<void()>& node : exec->nodes) node();
    }));
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
    delete exec;
    return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
    delete graph;
    return cudaSuccess;
}

cudaError_t cudaGetLastError() {
    std::lock_guard<std::mutex> lock(g_mutex);
    const cudaError_t err = g_last_error;
    g_last_error = cudaSuccess;
    return err;
}

cudaError_t cudaPeekAtLastError() {
    std::lock_guard<std::mutex> lock(g_mutex);
    return g_last_error;
}

const char* cudaGetErrorName(cudaError_t error) {
    const ErrorText* text = find_error_text(error);
    return text ? text->name : "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t error) {
    const ErrorText* text = find_error_text(error);
    return text ? text->message : "unknown error";
}

const char* cublasGetStatusName(cublasStatus_t status) {
    return status == CUBLAS_STATUS_SUCCESS ? "CUBLAS_STATUS_SUCCESS" : "CUBLAS_STATUS_ERROR";
}

const char* cublasGetStatusString(cublasStatus_t status) {
    return status == CUBLAS_STATUS_SUCCESS ? "success" : "cuBLAS is not part of the emulator";
}
