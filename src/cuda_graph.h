// src/cuda_graph.h: a stream of the library's own and one captured CUDA graph on it, for work
// that is issued the same way many times (the flow-matching step: src/train_step.cpp). Internal
// header, not installed. Without CUDA (or on the CPU) both are inert: no stream, no graph.
//
// Why a graph: a device training step is ~20-40 small launches (draws, coupling, network,
// loss, Adam); at DW4 and LJ13 sizes each kernel runs for microseconds, so the host's launch
// overhead (~2-5 us a launch) is a large part of the step. A captured graph replays the whole
// sequence with one launch. Nothing in the captured work may depend on the host between steps:
// what changes from step to step lives in device memory (train_math::StepArgs).
#pragma once

#include <functional>
#include <string>

#include "eqflow/device.h"
#include "eqflow/export.h"

namespace eqflow::detail {

// A stream of the library's own on the GPU (nullptr on the CPU). Blocking (the default): ordered
// with the legacy default stream both ways, so work that other code issues on the default stream
// (parameter uploads and downloads) stays ordered with the work on this one. This relies on
// nullptr meaning the legacy stream: a build with per-thread default streams is refused
// (src/cuda_graph.cpp). Non-blocking: independent of the legacy stream, which is what a capture
// needs, so that other threads' work on the legacy stream neither joins nor breaks it.
class EQFLOW_API OwnedStream {
  public:
    OwnedStream() = default;
    explicit OwnedStream(Device device, bool non_blocking = false);
    ~OwnedStream();
    OwnedStream(OwnedStream&& other) noexcept;
    OwnedStream& operator=(OwnedStream&& other) noexcept;
    OwnedStream(const OwnedStream&) = delete;
    OwnedStream& operator=(const OwnedStream&) = delete;
    Stream get() const { return stream_; }
    // Waits for the stream's work; errors are ignored (for destructors).
    void wait() const noexcept;

  private:
    Stream stream_ = nullptr;
};

// One graph captured from `work` on a stream, replayed by launch().
class EQFLOW_API CapturedWork {
  public:
    CapturedWork() = default;
    ~CapturedWork();
    CapturedWork(CapturedWork&& other) noexcept;
    CapturedWork& operator=(CapturedWork&& other) noexcept;
    CapturedWork(const CapturedWork&) = delete;
    CapturedWork& operator=(const CapturedWork&) = delete;

    // Captures what work() issues on `stream` (a non-blocking OwnedStream) and instantiates it,
    // in thread-local capture mode: this thread may not synchronise, allocate or copy from host
    // memory meanwhile, other threads are not affected. During capture nothing runs. True when
    // the graph is ready; false when capture failed (work threw, or issued something capture
    // forbids), with the reason in *why; then no work ran, the runtime's error state is cleared,
    // and the caller runs work() itself.
    bool capture(Stream stream, const std::function<void()>& work, std::string* why);
    bool ready() const { return exec_ != nullptr; }
    // Queues the graph on `stream` (any stream: the graph does not belong to the one it was
    // captured on).
    void launch(Stream stream);

  private:
    void* exec_ = nullptr;  // cudaGraphExec_t
};

// The stream and graph policy of a training step (FlowMatchingStep, LikelihoodStep): on CUDA the
// step runs on a blocking stream of its own; its first run() issues the work launch by launch
// (so that one-time work such as raising a kernel's shared-memory limit is not captured), the
// second captures it on a non-blocking stream in thread-local mode (so that other threads' CUDA
// work meanwhile neither joins nor breaks the capture), and every later one replays the graph on
// the step's stream. If capture fails, status() says why and the work keeps running launch by
// launch. Off on the CPU, and when turned off by the step's option or EQFLOW_NO_CUDA_GRAPH.
class EQFLOW_API StepGraph {
  public:
    StepGraph() = default;
    // `option` names the step's option in the status ("FlowMatchingStepOptions::cuda_graph").
    StepGraph(Device device, bool enabled, const char* option);
    // The step's stream (nullptr on the CPU).
    Stream stream() const { return own_.get(); }
    // Issues the step's work once, as above. `current` is the variable every operation of the
    // work is issued on: set to the capture stream while capturing, restored whatever happens.
    void run(Stream& current, const std::function<void()>& work);
    // "on: ...", "pending: ...", or "off: <why>".
    const std::string& status() const { return status_; }
    // Waits for the step's stream; errors are ignored (for destructors).
    void wait() const noexcept { own_.wait(); }

  private:
    OwnedStream own_, capture_;
    CapturedWork graph_;
    bool wanted_ = false;  // capture at the next run (cleared when capture fails)
    bool ran_ = false;     // run() has issued the work once
    std::string status_;
};

}  // namespace eqflow::detail
