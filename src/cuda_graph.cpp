// The stream and graph of src/cuda_graph.h.
#include "cuda_graph.h"

#include <cstdlib>
#include <exception>
#include <utility>

#include "eqflow/error.h"

#if defined(EQFLOW_HAVE_CUDA)
#include <cuda_runtime_api.h>

#include "kernels/cuda_check.cuh"

// The library orders its own streams with work on stream nullptr through the legacy default
// stream's implicit synchronisation; with per-thread default streams that ordering is gone.
#if defined(CUDA_API_PER_THREAD_DEFAULT_STREAM)
#error "eqflow relies on the legacy default stream: build without per-thread default streams"
#endif
#endif

namespace eqflow::detail {

OwnedStream::OwnedStream(Device device, bool non_blocking) {
#if defined(EQFLOW_HAVE_CUDA)
    if (device != Device::cuda) return;
    cudaStream_t s = nullptr;
    EQFLOW_CUDA_CHECK(
        cudaStreamCreateWithFlags(&s, non_blocking ? cudaStreamNonBlocking : cudaStreamDefault));
    stream_ = s;
#else
    (void)device;
    (void)non_blocking;
#endif
}

void OwnedStream::wait() const noexcept {
#if defined(EQFLOW_HAVE_CUDA)
    if (stream_ != nullptr && cudaStreamSynchronize(EQFLOW_STREAM(stream_)) != cudaSuccess)
        cudaGetLastError();
#endif
}

OwnedStream::~OwnedStream() {
#if defined(EQFLOW_HAVE_CUDA)
    // Pending work still completes; the runtime releases the stream after it.
    if (stream_ != nullptr) cudaStreamDestroy(EQFLOW_STREAM(stream_));
#endif
}

OwnedStream::OwnedStream(OwnedStream&& other) noexcept
    : stream_(std::exchange(other.stream_, nullptr)) {}

OwnedStream& OwnedStream::operator=(OwnedStream&& other) noexcept {
    if (this != &other) {
        OwnedStream old(std::move(*this));
        stream_ = std::exchange(other.stream_, nullptr);
    }
    return *this;
}

CapturedWork::~CapturedWork() {
#if defined(EQFLOW_HAVE_CUDA)
    if (exec_ != nullptr) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
#endif
}

CapturedWork::CapturedWork(CapturedWork&& other) noexcept
    : exec_(std::exchange(other.exec_, nullptr)) {}

CapturedWork& CapturedWork::operator=(CapturedWork&& other) noexcept {
    if (this != &other) {
        CapturedWork old(std::move(*this));
        exec_ = std::exchange(other.exec_, nullptr);
    }
    return *this;
}

bool CapturedWork::capture(Stream stream, const std::function<void()>& work, std::string* why) {
    EQFLOW_CHECK(exec_ == nullptr, "CUDA graph: captured twice");
#if defined(EQFLOW_HAVE_CUDA)
    EQFLOW_CHECK(stream != nullptr, "CUDA graph: the legacy default stream cannot be captured");
    const cudaStream_t s = EQFLOW_STREAM(stream);
    const auto failed = [&](const std::string& reason) {
        cudaGetLastError();  // the capture's errors are not the caller's
        if (why != nullptr) *why = reason;
        return false;
    };
    cudaError_t err = cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
    if (err != cudaSuccess) return failed(std::string("begin capture: ") + cudaGetErrorString(err));
    std::string thrown;
    try {
        work();
    } catch (const std::exception& e) {
        thrown = e.what();
    } catch (...) {
        thrown = "an exception that is not a std::exception";
    }
    cudaGraph_t graph = nullptr;
    err = cudaStreamEndCapture(s, &graph);  // ends the capture whatever happened inside
    if (!thrown.empty()) {
        if (graph != nullptr) cudaGraphDestroy(graph);
        return failed("the captured work failed: " + thrown);
    }
    if (err != cudaSuccess || graph == nullptr)
        return failed(std::string("end capture: ") + cudaGetErrorString(err));
    cudaGraphExec_t exec = nullptr;
    err = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    if (err != cudaSuccess) return failed(std::string("instantiate: ") + cudaGetErrorString(err));
    exec_ = exec;
    return true;
#else
    (void)stream;
    (void)work;
    if (why != nullptr) *why = "eqflow was built without CUDA";
    return false;
#endif
}

void CapturedWork::launch(Stream stream) {
    EQFLOW_CHECK(exec_ != nullptr, "CUDA graph: launched before capture");
#if defined(EQFLOW_HAVE_CUDA)
    EQFLOW_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), EQFLOW_STREAM(stream)));
#else
    (void)stream;
#endif
}

StepGraph::StepGraph(Device device, bool enabled, const char* option) : own_(device) {
    const char* no_graph = std::getenv("EQFLOW_NO_CUDA_GRAPH");
    if (device != Device::cuda) {
        status_ = "off: not a CUDA step";
    } else if (!enabled || (no_graph != nullptr && *no_graph != '\0' && *no_graph != '0')) {
        status_ = std::string("off: turned off (") + option + " or EQFLOW_NO_CUDA_GRAPH)";
    } else {
        wanted_ = true;
        status_ = "pending: captured at the second step";
        capture_ = OwnedStream(device, true);
    }
}

void StepGraph::run(Stream& current, const std::function<void()>& work) {
    if (!graph_.ready() && wanted_ && ran_) {
        struct Restore {
            Stream& target;
            Stream saved;
            ~Restore() { target = saved; }
        } restore{current, current};
        current = capture_.get();
        std::string why;
        if (graph_.capture(current, work, &why)) {
            status_ = "on: the step is one CUDA graph, replayed";
        } else {
            wanted_ = false;
            status_ = "off: capture failed (" + why + ")";
        }
    }
    if (graph_.ready())
        graph_.launch(current);
    else
        work();
    ran_ = true;
}

}  // namespace eqflow::detail
